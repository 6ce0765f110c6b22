#!/usr/bin/env bash
# Build the real guests of tests/real_os.rs from Debian packages, into $1 (cached by the caller):
#
# - os-a.img, os-b.img: two tiny operating systems, each a raw disk holding a FAT file system
#   with SYSLINUX in its boot sector, a Debian kernel and a busybox initramfs. At boot the OS prints
#   `osprov-os: <name> hostname: <name from its disk>` on the serial console and, on its first boot
#   after an install, reports to the callback URL the installer left on the disk. Booted as a
#   cloud image (libvirt's `image` strategy), it reads a NoCloud seed found by label `cidata` the
#   way cloud-init does (a new `instance-id` is a new instance: hostname and report URL from the
#   seed) and reports the same way.
# - installer-b.iso: a bootable installer (ISOLINUX, the same kernel, an installer initramfs and
#   os-b.img as payload). It finds the NoCloud config drive by its label (`cidata`), writes the
#   payload to the first virtio disk, copies the hostname (meta-data `local-hostname`) and the
#   callback URL onto it, prints `osprov-installer: wrote <os>` and powers the machine off. The
#   drive may be a CD-ROM (libvirt) or a floppy (a BMC's Floppy virtual medium); booted from a
#   per-operation boot ISO, the kernel command line's `ds=nocloud;s=/cdrom/` names the
#   configuration on the boot medium itself, as Ubuntu's installer reads it.
#
# Nothing is installed: the packages are downloaded and unpacked (`apt-get download`,
# `dpkg-deb -x`). The build tools (xorriso, syslinux, mtools, dosfstools, cpio) come from Debian
# too; scripts/test.sh installs them.
set -euo pipefail
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
cd "$work"

kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel_pkg" ] || ! apt-get download -qq "$kernel_pkg" busybox-static 2>/dev/null; then
    # No package lists yet (a fresh machine): fetch them once.
    if [ "$(id -u)" = 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
    kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    apt-get download -qq "$kernel_pkg" busybox-static
fi
dpkg-deb -x "$kernel_pkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
modules=$(ls -d kernel/lib/modules/*)
vmlinuz=$(ls kernel/boot/vmlinuz-*)

# The modules a guest needs, in load order: IDE CD-ROMs, the floppy drive (a BMC's Floppy virtual
# medium), ISO 9660, virtio disk and network, FAT.
MODULES="scsi_common scsi_mod cdrom libata ata_piix sr_mod floppy isofs virtio_ring virtio \
virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover \
virtio_net fat vfat nls_cp437 nls_ascii"

# An initramfs tree with busybox, the modules and `init` from stdin's script.
initramfs() {
    local dir=$1
    mkdir -p "$dir"/{bin,sbin,dev,proc,sys,mnt,cdrom,cidata,disk,lib/modules,tmp}
    cp busybox/bin/busybox "$dir/bin/busybox"
    for applet in $(busybox/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
    done
    for m in $MODULES; do
        cp "$(find "$modules" -name "$m.ko" | head -1)" "$dir/lib/modules/"
    done
    cat > "$dir/lib/common.sh" <<'EOF'
log() { echo "$*" > /dev/console; }
setup() {
    mount -t proc proc /proc
    mount -t sysfs sys /sys
    mount -t devtmpfs dev /dev
    for m in scsi_common scsi_mod cdrom libata ata_piix sr_mod floppy isofs virtio_ring virtio \
        virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover \
        net_failover virtio_net fat vfat nls_cp437 nls_ascii; do
        insmod /lib/modules/$m.ko 2>/dev/null
    done
    # Devices appear asynchronously: wait for the disk.
    for _ in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
}
# QEMU's user networking: the host's loopback is 10.0.2.2.
network() {
    for _ in $(seq 50); do [ -d /sys/class/net/eth0 ] && break; sleep 0.1; done
    ip link set lo up
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
}
EOF
    cat > "$dir/init"
    chmod +x "$dir/init"
}

pack() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -9) > "$2"; }

# One OS: a FAT disk (no partition table) booted by SYSLINUX.
os_image() {
    local name=$1
    initramfs "os-$name" <<EOF
#!/bin/sh
. /lib/common.sh
setup
mount -t vfat /dev/vda /disk
# A NoCloud seed (the libvirt image strategy's config drive), read as cloud-init reads one: a new
# instance-id means a new instance, whose hostname and report URL come from the seed.
for _ in \$(seq 10); do [ -e /sys/block/sr0 ] && break; sleep 0.2; done
seed=""
for _ in \$(seq 15); do [ -e /sys/block/sr0 ] || break; seed=\$(findfs LABEL=cidata 2>/dev/null) && break; sleep 0.2; done
if [ -n "\$seed" ] && mount -t iso9660 -o ro "\$seed" /cidata; then
    iid=\$(sed -n 's/^instance-id: *//p' /cidata/meta-data)
    if [ "\$iid" != "\$(cat /disk/osprov/instance-id 2>/dev/null)" ]; then
        sed -n 's/^local-hostname: *//p' /cidata/meta-data > /disk/osprov/hostname
        cp /cidata/osprov-callback /disk/osprov/callback
        echo "\$iid" > /disk/osprov/instance-id
        rm -f /disk/osprov/reported
        log "osprov-os: $name configured from its seed \$seed"
    fi
    umount /cidata
fi
host=\$(cat /disk/osprov/hostname 2>/dev/null || echo unnamed)
hostname "\$host"
log "osprov-os: $name hostname: \$host"
if [ -f /disk/osprov/callback ] && [ ! -f /disk/osprov/reported ]; then
    network
    url=\$(cat /disk/osprov/callback)
    body='{"status":"succeeded","os":"os-$name","message":"first boot of $name as '"\$host"'"}'
    for _ in \$(seq 30); do
        if wget -q -O /tmp/answer --header 'Content-Type: application/json' \
            --post-data "\$body" "\$url"; then
            touch /disk/osprov/reported
            log "osprov-os: $name reported its first boot"
            break
        fi
        sleep 1
    done
fi
sync
while :; do sleep 3600; done
EOF
    pack "os-$name" "initrd-$name.gz"
    rm -f "os-$name.img"
    mkfs.vfat -C -n "OS$(echo "$name" | tr a-z A-Z)" "os-$name.img" 24576 >/dev/null
    printf 'DEFAULT os\nPROMPT 0\nTIMEOUT 0\nLABEL os\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND console=ttyS0 quiet\n' > syslinux.cfg
    MTOOLS_SKIP_CHECK=1 mcopy -i "os-$name.img" "$vmlinuz" ::/vmlinuz
    MTOOLS_SKIP_CHECK=1 mcopy -i "os-$name.img" "initrd-$name.gz" ::/initrd.gz
    MTOOLS_SKIP_CHECK=1 mcopy -i "os-$name.img" syslinux.cfg ::/syslinux.cfg
    MTOOLS_SKIP_CHECK=1 mmd -i "os-$name.img" ::/osprov
    syslinux --install "os-$name.img"
}

os_image a
os_image b

initramfs installer <<'EOF'
#!/bin/sh
. /lib/common.sh
setup
# The config drive by its label. busybox's findfs skips floppies (major 2) by design, so a drive on
# a floppy (a BMC's Floppy virtual medium) is recognised by its ISO 9660 volume label, read from
# the primary volume descriptor (sector 16, label at byte 40) as util-linux's blkid would.
cidata() {
    findfs LABEL=cidata 2>/dev/null && return 0
    [ -b /dev/fd0 ] && [ "$(dd if=/dev/fd0 bs=1 skip=32808 count=6 2>/dev/null)" = cidata ] &&
        echo /dev/fd0
}
# A per-operation boot ISO names its NoCloud seed on the kernel command line
# (`ds=nocloud;s=/cdrom/`): the configuration is on the boot medium itself. Otherwise it is on a
# drive of its own, found by label.
seed=$(sed -n 's/.*ds=nocloud;s=\([^ ]*\).*/\1/p' /proc/cmdline)
for _ in $(seq 50); do
    findfs LABEL=OSPROV_INSTALL >/dev/null 2>&1 && { [ -n "$seed" ] || cidata >/dev/null; } && break
    sleep 0.2
done
media=$(findfs LABEL=OSPROV_INSTALL) || { log "osprov-installer: no install medium"; poweroff -f; }
mount -t iso9660 -o ro "$media" /cdrom
if [ -n "$seed" ]; then
    config=${seed%/}
    from="the boot medium ($seed)"
else
    drive=$(cidata) || { log "osprov-installer: no config drive"; poweroff -f; }
    mount -t iso9660 -o ro "$drive" /cidata
    config=/cidata
    from=$drive
fi
[ -f "$config/meta-data" ] || { log "osprov-installer: no meta-data in $config"; poweroff -f; }
os=$(cat /cdrom/os)
log "osprov-installer: installing $os from $media, configuration from $from"
dd if=/cdrom/os.img of=/dev/vda bs=1M 2>/dev/null
sync
mount -t vfat /dev/vda /disk
sed -n 's/^local-hostname: *//p' "$config/meta-data" > /disk/osprov/hostname
cp "$config/osprov-callback" /disk/osprov/callback
umount /disk
sync
log "osprov-installer: wrote $os"
poweroff -f
EOF
pack installer initrd-installer.gz
mkdir -p iso/isolinux
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 iso/isolinux/
cp "$vmlinuz" iso/vmlinuz
cp initrd-installer.gz iso/initrd.gz
cp os-b.img iso/os.img
echo b > iso/os
printf 'DEFAULT install\nPROMPT 0\nTIMEOUT 0\nLABEL install\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND console=ttyS0 quiet\n' > iso/isolinux/isolinux.cfg
xorriso -as mkisofs -quiet -V OSPROV_INSTALL -R -J \
    -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 \
    -boot-info-table -o installer-b.iso iso
cp os-a.img os-b.img installer-b.iso "$out/"
echo "guests built in $out"
