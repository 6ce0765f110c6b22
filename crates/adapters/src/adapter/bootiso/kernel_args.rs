//! Kernel arguments added to an installer ISO's boot menus: every ISOLINUX/SYSLINUX `APPEND`
//! line and every GRUB `linux` line gets them, before a `---` separator where there is one
//! (arguments after it are the ones an installer copies into the installed system; Ubuntu's own
//! autoinstall documentation puts `autoinstall` before it).
//!
//! GRUB splits a `linux` line into words with shell-like quoting, and `;` ends a command there, so
//! every argument holding anything but plain characters is single-quoted for GRUB
//! (`'ds=nocloud;s=/cdrom/'`); SYSLINUX passes its line as it is.

/// Which boot loader reads a configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    /// ISOLINUX/SYSLINUX (`APPEND …`, keywords in any case).
    Syslinux,
    /// GRUB 2 (`linux`, `linuxefi`, `linux16` commands).
    Grub,
}

/// `cfg` with `args` added to each kernel command line, or `None` when it has none.
pub fn add(cfg: &str, args: &str, loader: Loader) -> Option<String> {
    let args = match loader {
        Loader::Syslinux => args.split_whitespace().collect::<Vec<_>>().join(" "),
        Loader::Grub => args
            .split_whitespace()
            .map(grub_word)
            .collect::<Vec<_>>()
            .join(" "),
    };
    if args.is_empty() {
        return None;
    }
    let mut changed = false;
    let lines: Vec<String> = cfg
        .split_inclusive('\n')
        .map(|line| match with_args(line, &args, loader) {
            Some(l) => {
                changed = true;
                l
            }
            None => line.to_string(),
        })
        .collect();
    changed.then(|| lines.concat())
}

/// One line with the arguments, when it is a kernel command line.
fn with_args(line: &str, args: &str, loader: Loader) -> Option<String> {
    let body = line.trim_end_matches(['\n', '\r']);
    let ending = &line[body.len()..];
    let keyword = body.split_whitespace().next()?.to_ascii_lowercase();
    let is_kernel_line = match loader {
        Loader::Syslinux => keyword == "append",
        Loader::Grub => matches!(keyword.as_str(), "linux" | "linuxefi" | "linux16"),
    };
    if !is_kernel_line {
        return None;
    }
    let trimmed = body.trim_end();
    let new = match trimmed.find(" ---") {
        Some(at) if trimmed[at + 4..].is_empty() || trimmed[at + 4..].starts_with(' ') => {
            format!(
                "{} {args} {}",
                trimmed[..at].trim_end(),
                trimmed[at..].trim_start()
            )
        }
        _ => format!("{trimmed} {args}"),
    };
    Some(format!("{new}{ending}"))
}

/// One argument as a GRUB word: as it is when it holds only plain characters, else in single
/// quotes (a quote inside closed, escaped and reopened).
fn grub_word(arg: &str) -> String {
    let plain = arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./=:,-+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslinux_append_lines_get_the_arguments_in_any_case_and_before_the_separator() {
        let cfg =
            "DEFAULT install\nLABEL install\n  KERNEL /vmlinuz\n  APPEND console=ttyS0 quiet\n\
                   label live\n  append initrd=/casper/initrd quiet ---\r\n";
        let out = add(cfg, "autoinstall  ds=nocloud;s=/cdrom/", Loader::Syslinux).expect("changed");
        assert_eq!(
            out,
            "DEFAULT install\nLABEL install\n  KERNEL /vmlinuz\n  APPEND console=ttyS0 quiet \
             autoinstall ds=nocloud;s=/cdrom/\nlabel live\n  append initrd=/casper/initrd quiet \
             autoinstall ds=nocloud;s=/cdrom/ ---\r\n"
        );
    }

    #[test]
    fn grub_linux_lines_get_quoted_arguments() {
        let cfg = "menuentry \"Try or Install\" {\n\tlinux\t/casper/vmlinuz  --- quiet\n\tinitrd /casper/initrd\n}\n";
        let out = add(cfg, "autoinstall ds=nocloud;s=/cdrom/ a'b", Loader::Grub).expect("changed");
        assert!(
            out.contains(
                "\tlinux\t/casper/vmlinuz autoinstall 'ds=nocloud;s=/cdrom/' 'a'\\''b' --- quiet\n"
            ),
            "{out}"
        );
        assert!(out.contains("\tinitrd /casper/initrd\n"));
    }

    #[test]
    fn a_file_without_kernel_lines_or_no_arguments_is_left_alone() {
        assert_eq!(add("set timeout=5\n", "autoinstall", Loader::Grub), None);
        assert_eq!(add("APPEND quiet\n", "   ", Loader::Syslinux), None);
        // `---x` is an argument, not the separator.
        assert_eq!(
            add("append a ---x\n", "b", Loader::Syslinux).as_deref(),
            Some("append a ---x b\n")
        );
    }
}
