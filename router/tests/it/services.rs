//! Real PostgreSQL and Redis for the tests: one instance of each per test binary, started on
//! free loopback ports in a temp dir the first time a test asks, and stopped when the test
//! binary exits however it exits: each service has a small watchdog shell that waits for this
//! process to end, then stops the service by its PID (or `pg_ctl stop`) and removes the dir.
//! A service that cannot be started fails the test with the reason; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
}

pub struct Redis {
    pub port: u16,
}

static PG: OnceLock<Result<Postgres, String>> = OnceLock::new();
static REDIS: OnceLock<Result<Redis, String>> = OnceLock::new();

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_pg(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

/// Stops `stop` (a shell command) once this test process has exited.
fn watchdog(stop: &str) {
    let me = std::process::id();
    let script = format!("while kill -0 {me} 2>/dev/null; do sleep 0.3; done; {stop}");
    let _ = Command::new("setsid")
        .args(["bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn find_initdb() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("initdb"))
            .find(|f| f.exists())
    });
    let found = on_path.or_else(|| {
        let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin/initdb"))
            .filter(|p| p.exists())
            .collect();
        v.sort();
        v.pop()
    })?;
    std::fs::canonicalize(found).ok()
}

fn start_postgres() -> Result<Postgres, String> {
    let initdb = find_initdb().ok_or(
        "PostgreSQL is not installed (no initdb): run ./scripts/test, or apt-get install postgresql",
    )?;
    let pg_ctl = initdb.with_file_name("pg_ctl");
    let dir = std::env::temp_dir().join(format!("tb-router-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !ok.success() {
            return Err("chown of the PostgreSQL temp dir to `postgres` failed".into());
        }
    }
    let data = dir.join("data");
    let out = as_pg(&initdb)
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
        dir.display()
    );
    let out = as_pg(&pg_ctl)
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-o", &opts, "-w", "-t", "60", "start"])
        .output()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        return Err(format!(
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let runas = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    watchdog(&format!(
        "{runas}{} -D {} -m immediate stop; rm -rf {}",
        pg_ctl.display(),
        data.display(),
        dir.display()
    ));
    Ok(Postgres { port })
}

fn start_redis() -> Result<Redis, String> {
    let dir = std::env::temp_dir().join(format!("tb-router-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server is not installed or did not start ({e}): run ./scripts/test, or apt-get install redis-server"))?;
    watchdog(&format!("kill {}; rm -rf {}", child.id(), dir.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"PING\r\n");
            let mut buf = [0u8; 16];
            if s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            {
                return Ok(Redis { port });
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("redis-server did not answer PING on port {port}"))
}

/// The shared PostgreSQL; panics with the reason when it cannot be had.
pub fn postgres() -> &'static Postgres {
    match PG.get_or_init(start_postgres) {
        Ok(p) => p,
        Err(e) => panic!("PostgreSQL is needed by this test: {e}"),
    }
}

/// The shared Redis; panics with the reason when it cannot be had.
pub fn redis() -> &'static Redis {
    match REDIS.get_or_init(start_redis) {
        Ok(r) => r,
        Err(e) => panic!("Redis is needed by this test: {e}"),
    }
}

/// A unique name for a test's database or key prefix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// A fresh database of its own on the shared PostgreSQL; its URL.
pub async fn pg_database() -> String {
    let pg = postgres();
    let name = unique("t");
    let admin = format!("postgresql://postgres@127.0.0.1:{}/postgres", pg.port);
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test database");
    format!("postgresql://postgres@127.0.0.1:{}/{name}", pg.port)
}

/// The shared Redis URL and a key prefix of the test's own.
pub fn redis_url() -> (String, String) {
    (
        format!("redis://127.0.0.1:{}", redis().port),
        unique("tbtest"),
    )
}
