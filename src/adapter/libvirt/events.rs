//! libvirt's event loop and domain lifecycle callbacks, as a channel of domain UUIDs.
//!
//! libvirt delivers events only to a process that registered an event loop implementation
//! before opening connections and keeps running it; the `virt` crate wraps both calls but not the
//! registration of domain callbacks, so that part uses `virt::sys` directly (the two `unsafe`
//! blocks below). The callback only copies the domain's UUID into a channel: it runs on the
//! event loop's thread, where blocking or calling back into libvirt would stall every event.
use crate::adapter::AdapterError;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;
use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::sys;

static LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// Register libvirt's default event loop and run it on a thread of its own, once per process.
pub fn ensure_loop() -> Result<(), AdapterError> {
    let started = LOOP.get_or_init(|| {
        // libvirt prints every error to stderr unless told otherwise; osprov reports them.
        virt::error::clear_error_callback();
        virt::event::event_register_default_impl().map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!(error = %e, "libvirt event loop iteration failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    started.clone().map_err(|e| AdapterError::Backend {
        message: format!("starting libvirt's event loop: {e}"),
        source: None,
    })
}

type Sender = mpsc::UnboundedSender<String>;

unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: libvirt passes a live domain and the opaque pointer registered below (a boxed
    // Sender that lives until the free callback); the buffer has the documented length.
    unsafe {
        if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            let uuid = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
            let tx = &*(opaque as *const Sender);
            let _ = tx.send(uuid);
        }
    }
    0
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: the pointer is the Box registered below; libvirt calls this once.
    unsafe { drop(Box::from_raw(opaque as *mut Sender)) };
}

/// A registered lifecycle callback; dropping it deregisters.
pub struct Registration {
    conn: Connect,
    id: c_int,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: the id came from a successful registration on this connection.
        unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.id) };
    }
}

/// Lifecycle events of every domain of `conn`: the UUID of each domain that changed.
pub fn lifecycle_events(
    conn: &Connect,
) -> Result<(Registration, mpsc::UnboundedReceiver<String>), AdapterError> {
    ensure_loop()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt's documented way to register a typed callback is to cast it to the generic
    // type and name the event id; it calls it back with the lifecycle signature.
    let id = unsafe {
        let cb = std::mem::transmute::<Lifecycle, Generic>(lifecycle);
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(cb),
            opaque,
            Some(free_sender),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take the pointer.
        unsafe { drop(Box::from_raw(opaque as *mut Sender)) };
        let e = virt::error::Error::last_error();
        return Err(super::conn::call("registering for domain events", &e));
    }
    Ok((
        Registration {
            conn: conn.clone(),
            id,
        },
        rx,
    ))
}
