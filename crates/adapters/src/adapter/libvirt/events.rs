//! libvirt's event loop and domain lifecycle callbacks, as a channel of domain UUIDs.
//!
//! libvirt delivers events only to a process that registered an event loop implementation
//! before opening connections and keeps running it; the `virt` crate wraps both calls but not the
//! registration of domain callbacks, so that part uses `virt::sys` directly (the two `unsafe`
//! blocks below). The callback only copies the domain's UUID into a channel: it runs on the
//! event loop's thread, where blocking or calling back into libvirt would stall every event.
//!
//! libvirt accepts one registration of a callback per connection ("event callback already
//! tracked" for a second), and osprov shares one connection per URI between dispatchers. So each
//! connection gets one registration, a hub, whose callback copies the UUID to every subscriber's
//! channel; the last subscriber to go deregisters it. A hub holds a reference to its connection,
//! so a connection's address (the hub's key) is not reused while the hub lives.
// The workspace denies unsafe code; the registration through `virt::sys` above needs it.
#![allow(unsafe_code)]
use crate::adapter::AdapterError;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
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
/// The subscribers of one connection's registration, by subscription number.
type Subscribers = Arc<Mutex<Vec<(u64, Sender)>>>;

/// One connection's registration and the channels it feeds.
struct Hub {
    conn: Connect,
    id: c_int,
    subscribers: Subscribers,
}

/// Hubs by connection address.
static HUBS: LazyLock<Mutex<HashMap<usize, Hub>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

unsafe extern "C" fn lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: libvirt passes a live domain and the opaque pointer registered below (a boxed
    // `Subscribers` that lives until the free callback); the buffer has the documented length.
    unsafe {
        if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            let uuid = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
            let subscribers = &*(opaque as *const Subscribers);
            for (_, tx) in lock(subscribers).iter() {
                let _ = tx.send(uuid.clone());
            }
        }
    }
    0
}

unsafe extern "C" fn free_subscribers(opaque: *mut c_void) {
    // SAFETY: the pointer is the Box registered below; libvirt calls this once.
    unsafe { drop(Box::from_raw(opaque as *mut Subscribers)) };
}

/// One subscription to a connection's lifecycle events; dropping it unsubscribes (and
/// deregisters the connection's callback when it was the last).
pub struct Registration {
    key: usize,
    subscription: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut hubs = lock(&HUBS);
        let Some(hub) = hubs.get(&self.key) else {
            return;
        };
        let empty = {
            let mut subscribers = lock(&hub.subscribers);
            subscribers.retain(|(n, _)| *n != self.subscription);
            subscribers.is_empty()
        };
        if !empty {
            return;
        }
        if let Some(hub) = hubs.remove(&self.key) {
            // SAFETY: the id came from a successful registration on this connection.
            unsafe { sys::virConnectDomainEventDeregisterAny(hub.conn.as_ptr(), hub.id) };
        }
    }
}

/// Lifecycle events of every domain of `conn`: the UUID of each domain that changed.
pub fn lifecycle_events(
    conn: &Connect,
) -> Result<(Registration, mpsc::UnboundedReceiver<String>), AdapterError> {
    ensure_loop()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let subscription = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
    // SAFETY: only the address is read, as the hub's key; nothing is dereferenced.
    let key = unsafe { conn.as_ptr() } as usize;
    let mut hubs = lock(&HUBS);
    if let Some(hub) = hubs.get(&key) {
        lock(&hub.subscribers).push((subscription, tx));
        return Ok((Registration { key, subscription }, rx));
    }
    let subscribers: Subscribers = Arc::new(Mutex::new(vec![(subscription, tx)]));
    let id = register(conn, subscribers.clone())?;
    hubs.insert(
        key,
        Hub {
            conn: conn.clone(),
            id,
            subscribers,
        },
    );
    Ok((Registration { key, subscription }, rx))
}

/// Registers [`lifecycle`] on `conn` for `subscribers`; the registration's id.
fn register(conn: &Connect, subscribers: Subscribers) -> Result<c_int, AdapterError> {
    let opaque = Box::into_raw(Box::new(subscribers)) as *mut c_void;
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
            Some(free_subscribers),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take the pointer.
        unsafe { drop(Box::from_raw(opaque as *mut Subscribers)) };
        let e = virt::error::Error::last_error();
        return Err(super::conn::call("registering for domain events", &e));
    }
    Ok(id)
}
