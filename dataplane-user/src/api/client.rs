//! The client side: one request and its answer, or a stream of answers.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, anyhow};

use super::{Envelope, Request, Response, decode};

fn send(socket: &Path, request: &Request) -> anyhow::Result<UnixStream> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the dataplane agent at {} (is `dataplane agent` running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(&Envelope::new(request))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending the request to the agent")?;
    Ok(stream)
}

fn answer(line: &str) -> anyhow::Result<Response> {
    decode(line.as_bytes()).map_err(|error| anyhow!("answer from the agent: {error}"))
}

/// Sends one request to the agent listening on `socket` and waits for its answer.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Response> {
    let stream = send(socket, request)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the agent's answer")?;
    answer(&line)
}

/// Sends `request` and hands every answer line to `each` until the agent
/// closes the connection or `each` returns false.
pub fn stream(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(Response) -> bool,
) -> anyhow::Result<()> {
    let stream = send(socket, request)?;
    for line in BufReader::new(&stream).lines() {
        if !each(answer(&line.context("reading from the agent")?)?) {
            break;
        }
    }
    Ok(())
}
