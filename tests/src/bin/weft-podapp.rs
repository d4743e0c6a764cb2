//! An unchanged app for the interception tests, run inside a network
//! namespace: `weft-podapp NAME ADDR...` answers every HTTP/1.1 request on
//! each ADDR with `NAME saw PEER`, and prints `NAME got PEER REQUEST-LINE
//! MARKER` (the `x-marker` header) on stdout, so a test can see whom the app
//! saw and what reached it. An address written `tcp:ADDR` speaks a line
//! protocol instead, server first: it greets with `NAME tcp ready`, reads
//! one line, answers `NAME tcp echo from PEER: LINE` and closes (printing
//! `NAME tcp got PEER LINE`). `weft-podapp --send ADDR LINE` is its client:
//! it sends LINE and prints all it is answered. Blocking std code: it knows
//! nothing of the mesh.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: weft-podapp NAME [tcp:]ADDR... | weft-podapp --send ADDR LINE")
    })?;
    if name == "--send" {
        let (Some(addr), Some(line)) = (args.next(), args.next()) else {
            anyhow::bail!("usage: weft-podapp --send ADDR LINE");
        };
        return send(&addr, &line);
    }
    let mut threads = Vec::new();
    for addr in args {
        let (tcp, addr) = match addr.strip_prefix("tcp:") {
            Some(a) => (true, a.to_string()),
            None => (false, addr),
        };
        let listener = TcpListener::bind(&addr)?;
        println!("{name} listening on {addr}");
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = if tcp {
                        echo(&name, stream)
                    } else {
                        serve(&name, stream)
                    };
                });
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One request per connection (the reply closes it).
fn serve(name: &str, stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut marker = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("x-marker")
        {
            marker = v.trim().to_string();
        }
    }
    println!("{name} got {} {} {marker}", peer.ip(), request_line.trim());
    let body = format!("{name} saw {}", peer.ip());
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The line protocol's server side: greeting, one line, its echo.
fn echo(name: &str, mut stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    writeln!(stream, "{name} tcp ready")?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    let line = line.trim();
    println!("{name} tcp got {} {line}", peer.ip());
    writeln!(stream, "{name} tcp echo from {}: {line}", peer.ip())?;
    stream.flush()
}

/// The line protocol's client: sends `line`, prints the answer to the end
/// (bounded: a peer that never closes ends the read after 10 s).
fn send(addr: &str, line: &str) -> anyhow::Result<()> {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    writeln!(stream, "{line}")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    print!("{answer}");
    Ok(())
}
