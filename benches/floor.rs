//! The floor under any request on this machine: one request and its answer between two
//! processes over a warm TCP connection on 127.0.0.1, with no DHT in between (each
//! process a tokio runtime of two workers, as our nodes' processes are). A first-valid
//! get is at least this round trip, so its p99 cannot be nearer its p50 than this
//! floor's is; measured beside the side-by-side, idle and loaded, in the same run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// Bytes of a request (a get's request is about this size).
const REQUEST_BYTES: usize = 100;
/// Bytes of an answer (a first-valid get's answer carries a 900-byte item).
const ANSWER_BYTES: usize = 1_000;
/// Round trips before measuring (connection and allocator warm-up).
const WARM_UP: usize = 50;

/// The echo process: accepts connections on 127.0.0.1, prints its port, and answers each
/// length-prefixed request with [`ANSWER_BYTES`]. Runs until killed.
pub async fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT {}", listener.local_addr()?.port());
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let answer = frame(ANSWER_BYTES);
            let mut body = vec![0u8; REQUEST_BYTES];
            loop {
                let len = match stream.read_u32().await {
                    Ok(len) => len as usize,
                    Err(_) => return,
                };
                body.resize(len.min(1 << 20), 0);
                if stream.read_exact(&mut body).await.is_err()
                    || stream.write_all(&answer).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// A length-prefixed frame of `len` bytes.
fn frame(len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_be_bytes().to_vec();
    f.resize(4 + len, 0x42);
    f
}

/// Starts the echo process (this binary with `--echo-worker`) and times `ops` round
/// trips to it, one at a time.
pub async fn measure(ops: usize) -> anyhow::Result<Vec<Duration>> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--echo-worker")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the echo process")?;
    let stdout = child.stdout.take().context("echo process stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await?;
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("echo process printed {line:?}"))?;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let request = frame(REQUEST_BYTES);
    let mut answer = vec![0u8; ANSWER_BYTES];
    let mut lat = Vec::with_capacity(ops);
    for i in 0..WARM_UP + ops {
        let t = Instant::now();
        stream.write_all(&request).await?;
        let len = stream.read_u32().await? as usize;
        anyhow::ensure!(len == ANSWER_BYTES, "echo answered {len} bytes");
        stream.read_exact(&mut answer).await?;
        if i >= WARM_UP {
            lat.push(t.elapsed());
        }
    }
    child.kill().await.ok();
    Ok(lat)
}
