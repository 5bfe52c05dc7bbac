//! AF_VSOCK helpers.

/// `VMADDR_CID_LOCAL`: this machine, through the loopback transport.
pub const VSOCK_CID_LOCAL: u32 = 1;

/// `VMADDR_PORT_ANY`: let the kernel choose a free port.
pub const VSOCK_PORT_ANY: u32 = u32::MAX;

/// `true` when this kernel can carry vsock traffic to itself (`vsock_loopback`), so vsock
/// tests can run locally.
///
/// Detected by binding a listener to `VMADDR_CID_LOCAL` on a kernel-chosen port: without the
/// loopback transport the bind fails with `EADDRNOTAVAIL`. Binding sends nothing. This never
/// connects to CID 1 or 2 to find out: without loopback those connects go to the hypervisor.
#[cfg(target_os = "linux")]
pub fn vsock_loopback_available() -> bool {
    // Any failure (no AF_VSOCK at all, EADDRNOTAVAIL, ...) means "cannot test here".
    vsock::VsockListener::bind_with_cid_port(VSOCK_CID_LOCAL, VSOCK_PORT_ANY).is_ok()
}

/// AF_VSOCK exists only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn vsock_loopback_available() -> bool {
    false
}
