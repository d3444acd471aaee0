//! `colibri-fake-agent`: a stand-in for pi in tests. It prints realistic pi
//! json-mode lines (session header, agent/turn/message/tool events with
//! usage, a last assistant message whose `stopReason` is `stop` or `error`)
//! and exits 0 either way, like pi. Flags make it misbehave the ways real
//! agents do: sleep, fail, flood, hang silently, print garbage, non-UTF-8 or
//! huge lines, fork grandchildren, ignore SIGTERM, exit without a final event.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "colibri-fake-agent")]
struct Args {
    /// Sleep this long (after the session header) before working.
    #[arg(long = "sleep-ms", default_value_t = 0)]
    sleep_ms: u64,
    /// End with stopReason "error" (still exit 0, like pi).
    #[arg(long)]
    fail: bool,
    /// Exit with this status.
    #[arg(long = "exit-code", default_value_t = 0)]
    exit_code: u8,
    /// Print N message_update lines as fast as possible.
    #[arg(long, default_value_t = 0)]
    flood: u64,
    /// Print the header, then nothing, forever.
    #[arg(long)]
    hang: bool,
    /// Print lines that are not JSON.
    #[arg(long)]
    garbage: bool,
    /// Print a line that is not UTF-8.
    #[arg(long = "non-utf8")]
    non_utf8: bool,
    /// Print one line of this many bytes.
    #[arg(long = "huge-line")]
    huge_line: Option<usize>,
    /// Start N grandchildren that sleep for an hour; their pids go to stderr
    /// (and the pidfile).
    #[arg(long, default_value_t = 0)]
    grandchildren: u32,
    /// Block SIGTERM, here and in the grandchildren.
    #[arg(long = "ignore-term")]
    ignore_term: bool,
    /// Exit without agent_end.
    #[arg(long = "no-final")]
    no_final: bool,
    /// Output tokens of the assistant message.
    #[arg(long = "usage-tokens", default_value_t = 120)]
    usage_tokens: u64,
    /// Try to write this file; exit 3 when that fails.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Try to connect to this TCP address; exit 4 when that fails.
    #[arg(long)]
    connect: Option<String>,
    /// Try to connect to this unix socket; exit 5 when that fails.
    #[arg(long = "connect-unix")]
    connect_unix: Option<PathBuf>,
    /// Try to attach to this pid with ptrace (0: the parent); exit 6 when
    /// that fails.
    #[arg(long)]
    ptrace: Option<i32>,
    /// Allocate and touch this many MiB, and hold them until the end.
    #[arg(long = "alloc-mib")]
    alloc_mib: Option<usize>,
    /// Write this process's pid, then each grandchild's, one per line.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Internal: run as a sleeping grandchild.
    #[arg(long, hide = true)]
    sleeper: bool,
    /// The prompt (ignored).
    prompt: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.ignore_term {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        if let Err(e) = set.thread_block() {
            eprintln!("blocking SIGTERM: {e}");
        }
    }
    if args.sleeper {
        println!("ready");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(3600));
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("colibri-fake-agent: {e}");
            ExitCode::from(70)
        }
    }
}

fn emit(out: &mut impl Write, value: Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms}")
}

fn usage(output: u64) -> Value {
    json!({"input": 1200, "output": output, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 1200 + output,
        "cost": {"input": 0.0036, "output": output as f64 * 0.000015, "cacheRead": 0.0, "cacheWrite": 0.0,
                 "total": 0.0036 + output as f64 * 0.000015}})
}

fn assistant(text: &str, stop: &str, output: u64) -> Value {
    let mut m = json!({"role": "assistant", "content": [{"type": "text", "text": text}],
        "api": "anthropic-messages", "provider": "anthropic", "model": "claude-sonnet-4",
        "usage": usage(output), "stopReason": stop, "timestamp": now()});
    if stop == "error" {
        m["errorMessage"] = json!("simulated failure");
    }
    m
}

fn run(args: &Args) -> std::io::Result<u8> {
    let mut pids = vec![std::process::id()];
    let mut children = Vec::new();
    for _ in 0..args.grandchildren {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("--sleeper")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if args.ignore_term {
            cmd.arg("--ignore-term");
        }
        let mut child = cmd.spawn()?;
        if let Some(out) = child.stdout.take() {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
        }
        eprintln!("grandchild pid {}", child.id());
        pids.push(child.id());
        children.push(child);
    }
    if let Some(path) = &args.pidfile {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(path, text)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    emit(
        &mut out,
        json!({"type": "session", "version": 3, "id": uuid::Uuid::new_v4().to_string(), "timestamp": now(), "cwd": cwd}),
    )?;
    if args.hang {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if args.sleep_ms > 0 {
        std::thread::sleep(Duration::from_millis(args.sleep_ms));
    }
    if let Some(path) = &args.write {
        if let Err(e) = std::fs::write(path, "written by colibri-fake-agent\n") {
            eprintln!("write {}: {e}", path.display());
            return Ok(3);
        }
    }
    if let Some(addr) = &args.connect {
        let ok = addr
            .parse()
            .ok()
            .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
            .is_some();
        if !ok {
            eprintln!("connect {addr}: failed");
            return Ok(4);
        }
    }
    if let Some(path) = &args.connect_unix {
        if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
            eprintln!("connect {}: {e}", path.display());
            return Ok(5);
        }
    }
    if let Some(pid) = args.ptrace {
        let pid = match pid {
            0 => nix::unistd::getppid(),
            p => nix::unistd::Pid::from_raw(p),
        };
        if let Err(e) = nix::sys::ptrace::attach(pid) {
            eprintln!("ptrace attach {pid}: {e}");
            return Ok(6);
        }
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    if let Some(mib) = args.alloc_mib {
        for _ in 0..mib {
            // Touched, so that the pages are really there.
            held.push(vec![1u8; 1 << 20]);
        }
        eprintln!("holding {} MiB", held.len());
    }
    emit(&mut out, json!({"type": "agent_start"}))?;
    emit(&mut out, json!({"type": "turn_start"}))?;
    let user = json!({"role": "user", "content": [{"type": "text", "text": args.prompt.join(" ")}], "timestamp": now()});
    emit(&mut out, json!({"type": "message_start", "message": user}))?;
    emit(&mut out, json!({"type": "message_end", "message": user}))?;
    if args.garbage {
        out.write_all(b"this is not json\n{\"type\": \"half\n<<<>>>\n")?;
    }
    if args.non_utf8 {
        out.write_all(b"{\"type\":\"\xff\xfe\xfd\"}\n")?;
    }
    if let Some(n) = args.huge_line {
        let text = "x".repeat(n.saturating_sub(64));
        emit(
            &mut out,
            json!({"type": "tool_execution_update", "toolCallId": "t1", "toolName": "bash", "partialResult": text}),
        )?;
    }
    let partial = assistant("", "stop", 0);
    emit(
        &mut out,
        json!({"type": "message_start", "message": partial}),
    )?;
    for i in 0..args.flood.max(1) {
        emit(
            &mut out,
            json!({"type": "message_update", "message": partial,
            "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": format!("chunk {i} ")}}),
        )?;
    }
    let tool_call = assistant("running a tool", "toolUse", args.usage_tokens / 2);
    emit(
        &mut out,
        json!({"type": "message_end", "message": tool_call}),
    )?;
    emit(
        &mut out,
        json!({"type": "tool_execution_start", "toolCallId": "t1", "toolName": "bash", "args": {"command": "ls"}}),
    )?;
    emit(
        &mut out,
        json!({"type": "tool_execution_end", "toolCallId": "t1", "toolName": "bash",
        "result": {"content": [{"type": "text", "text": "README.md\n"}]}, "isError": false}),
    )?;
    let stop = if args.fail { "error" } else { "stop" };
    let last = assistant(if args.fail { "" } else { "done" }, stop, args.usage_tokens);
    emit(&mut out, json!({"type": "message_start", "message": last}))?;
    emit(&mut out, json!({"type": "message_end", "message": last}))?;
    emit(
        &mut out,
        json!({"type": "turn_end", "message": last, "toolResults": []}),
    )?;
    if !args.no_final {
        emit(
            &mut out,
            json!({"type": "agent_end", "messages": [user, tool_call, last]}),
        )?;
    }
    drop(children);
    Ok(args.exit_code)
}
