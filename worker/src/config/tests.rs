//! Unit tests of the worker's configuration: every problem named, flags
//! over the file, usage errors, file checks and the default config path.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    flags: WorkerFlags,
}

fn flags(args: &[&str]) -> WorkerFlags {
    let mut argv = vec!["colibri-worker"];
    argv.extend_from_slice(args);
    Cli::parse_from(argv).flags
}

fn fields(err: ConfigError) -> Vec<String> {
    err.problems().iter().map(|p| p.field.clone()).collect()
}

#[test]
fn every_problem_names_its_field() {
    let text = r#"
worker_id = "Debby"
capabilities = ["linux", "gpu*"]
slots = 0
confinement = "unconfined"
keep_workdirs = "sometimes"
colour = "blue"
[limits]
idle_secs = 0
stall_secs = 0
spawn_retries = -1
bogus = 1
[agents.pi]
argv = []
[agents.command]
argv = ["x"]
"#;
    let err = resolve(Some(text), &WorkerFlags::default()).unwrap_err();
    let f = fields(err);
    for want in [
        "worker_id",
        "capabilities",
        "slots",
        "keep_workdirs",
        "colour",
        "limits.idle_secs",
        "limits.stall_secs",
        "limits.spawn_retries",
        "limits.bogus",
        "agents.pi.argv",
        "agents.command",
        "state_dir",
    ] {
        assert!(f.iter().any(|x| x == want), "missing {want} in {f:?}");
    }
}

#[test]
fn flags_override_file() {
    let text = r#"
worker_id = "debby"
capabilities = ["linux"]
slots = 2
state_dir = "/var/db/colibri-worker"
confinement = "unconfined"
[nats]
url = ["nats://10.0.0.1:4222"]
[agents.pi]
env = { ANTHROPIC_API_KEY = "sk-secret" }
"#;
    let cfg = resolve(
        Some(text),
        &flags(&["--slots", "5", "--worker-id", "other"]),
    )
    .unwrap();
    assert_eq!(cfg.slots, 5);
    assert_eq!(cfg.worker_id.as_str(), "other");
    assert_eq!(
        cfg.connect.nats_url,
        vec!["nats://10.0.0.1:4222".to_string()]
    );
    assert_eq!(cfg.confinement, Confinement::Unconfined);
    assert!(cfg.agents.enabled().iter().any(|t| t.as_str() == "pi"));
    let debug = format!("{cfg:?}");
    assert!(
        !debug.contains("sk-secret"),
        "secret leaked into Debug: {debug}"
    );
}

#[test]
fn bad_capability_flag_is_a_usage_error_naming_the_field() {
    let err = match Cli::try_parse_from(["w", "--capabilities", "linux,GPU"]) {
        Ok(_) => panic!("accepted GPU"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("--capabilities") && msg.contains("upper case"),
        "{msg}"
    );
}

// A two-hour agent was killed on default settings when max_run was 1 h.
#[test]
fn default_max_run_is_six_hours() {
    assert_eq!(Limits::default().max_run, Duration::from_secs(6 * 3600));
}

#[test]
fn missing_required_values_alone_are_a_usage_error() {
    let err = resolve(None, &WorkerFlags::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Missing(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("--worker-id") && msg.contains("--state-dir"),
        "{msg}"
    );
    let err = resolve(Some("slots = 0"), &WorkerFlags::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
}

#[test]
fn syntax_error_is_reported() {
    let err = resolve(Some("worker_id = "), &WorkerFlags::default()).unwrap_err();
    assert!(fields(err).contains(&"(file)".to_string()));
}

// Regression (issue 6): check-config did not check that the NATS files it
// names can be read, nor that the log file can be opened for append, so a
// daemon(8)-supervised worker failed at start and was restarted in a loop;
// and a bad key in [nats] or [log] hid the others.
#[test]
fn unreadable_nats_files_and_log_file_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("worker.nk");
    std::fs::write(&seed, "SU...").unwrap();
    let text = format!(
        r#"
worker_id = "debby"
state_dir = "/var/db/colibri-worker"
confinement = "unconfined"
[nats]
url = 3
creds = "/nonexistent/worker.creds"
tls_ca = "{}"
[log]
format = "xml"
file = "/nonexistent/dir/worker.log"
"#,
        dir.path().display()
    );
    let mut f = fields(resolve(Some(&text), &WorkerFlags::default()).unwrap_err());
    f.sort_unstable();
    assert_eq!(
        f,
        [
            "log.file",
            "log.format",
            "nats.creds",
            "nats.tls_ca",
            "nats.url"
        ]
    );
    let log = dir.path().join("worker.log");
    let ok = format!(
        "worker_id = \"debby\"\nstate_dir = \"/tmp/w\"\nconfinement = \"unconfined\"\n\
         [nats]\nnkey = \"{}\"\n[log]\nfile = \"{}\"\n",
        seed.display(),
        log.display()
    );
    let cfg = resolve(Some(&ok), &WorkerFlags::default()).unwrap();
    assert_eq!(cfg.connect.nkey, Some(seed));
    assert_eq!(cfg.log.file, Some(log));
}

#[test]
fn platform_default_config_read_when_present_and_kept_secret() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("worker.toml");
    let err = load_with_default(&WorkerFlags::default(), &default).unwrap_err();
    assert!(matches!(err, ConfigError::Missing(_)), "{err}");
    std::fs::write(
        &default,
        "worker_id = \"debby\"\nstate_dir = \"/tmp/w\"\nconfinement = \"unconfined\"\n",
    )
    .unwrap();
    let cfg = load_with_default(&WorkerFlags::default(), &default).unwrap();
    assert_eq!(cfg.worker_id.as_str(), "debby");
    assert_eq!(cfg.config_file.as_ref(), Some(&default));
    assert!(cfg.secret_files().contains(&default));
    // --config wins over the default, which is then not read.
    let err = load_with_default(&flags(&["--config", "/nonexistent.toml"]), &default);
    assert!(matches!(err, Err(ConfigError::Read { .. })));
}
