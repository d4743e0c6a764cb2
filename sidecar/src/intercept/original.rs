//! Where a redirected connection was going: the kernel keeps the address
//! the app dialled before `REDIRECT` rewrote it (`SO_ORIGINAL_DST`, or
//! `IP6T_SO_ORIGINAL_DST` for IPv6), read through socket2 (already in the
//! tree through hyper-util) so that no unsafe code is ours.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The original destination of an accepted, redirected connection. A
/// connection that was not redirected gets its own local address back
/// (conntrack knows every connection once the nat table is in use); with no
/// conntrack entry at all, the kernel answers `ENOENT`.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = if stream.local_addr()?.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP address",
        )
    })
}
