//! TUN devices opened inside another network namespace.
//!
//! A thread enters the namespace, opens `/dev/net/tun` and attaches it to a new interface with
//! `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`: raw IP packets, no header). The device belongs to the
//! namespace it was created in; the file descriptor keeps working from any thread afterwards, and
//! closing it removes the device.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};
use crate::netns;

/// An open TUN device (non-blocking).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

impl Tun {
    /// Creates the TUN interface `ifname` inside the named namespace. The interface is down and
    /// has no address: configure it with `ip -n NETNS ...`.
    pub fn create_in(netns_name: &str, ifname: &str) -> Result<Tun> {
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
            return Err(Error::Invalid(format!(
                "interface name `{ifname}` must have 1 to {} bytes",
                libc::IFNAMSIZ - 1
            )));
        }
        netns::run_in(netns_name, || Tun::create_here(ifname))?
    }

    /// Creates the TUN interface in the calling thread's namespace.
    fn create_here(ifname: &str) -> Result<Tun> {
        // SAFETY: the path is a valid NUL-terminated string.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(Error::NoTun {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(Error::last_os(format!("create TUN device {ifname}")));
        }
        Ok(Tun {
            fd,
            name: ifname.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `WouldBlock` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one packet, which the kernel of the device's namespace then receives.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is valid for reads of packet.len() bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
