//! `admin add-host NAME --capabilities a,b` and `admin add-user ROLE NAME`:
//! make an nkey identity, record it in the hosts file, and print the hub's
//! authorization block for every known identity. No server is contacted.
//!
//! In `--out DIR` (default `.`) it writes `NAME.nk` (the seed, mode 0600:
//! copy it to the host, never anywhere else), `NAME.pub`, `hosts.json` (give
//! it to `colibri-scheduler --hosts`) and `authorization.conf` (include it
//! in the hub's nats-server config, or pass it to the hub config generator).
//! The block goes to stdout, notes to stderr; the seed is printed nowhere.

use std::path::{Path, PathBuf};

use anyhow::Context;
use broker::identity::{self, render, Entry, Registry, Role};
use broker::TagSet;
use clap::{Args, Subcommand, ValueEnum};

use super::CliError;

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// A host's identity and the tags it may advertise.
    AddHost(AddHostArgs),
    /// A scheduler, operator or observer identity.
    AddUser(AddUserArgs),
    /// Print the authorization block of every identity in the hosts file.
    Authorization(DirArgs),
}

#[derive(Debug, Args)]
pub struct DirArgs {
    /// Directory of the seeds, public keys and hosts file.
    #[arg(long = "out", default_value = ".")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct AddHostArgs {
    /// Host name (also its worker id).
    pub name: String,
    /// Tags this host may advertise (comma list or repeated).
    #[arg(long = "capabilities", value_delimiter = ',')]
    pub capabilities: Vec<String>,
    #[command(flatten)]
    pub dir: DirArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UserRole {
    Scheduler,
    Operator,
    Observer,
}

#[derive(Debug, Args)]
pub struct AddUserArgs {
    pub role: UserRole,
    pub name: String,
    #[command(flatten)]
    pub dir: DirArgs,
}

/// The hosts file inside an admin directory.
pub fn hosts_file(dir: &Path) -> PathBuf {
    dir.join("hosts.json")
}

pub fn run(args: AdminArgs) -> Result<(), CliError> {
    match args.command {
        AdminCommand::AddHost(a) => {
            let capabilities = TagSet::parse_lists(&a.capabilities)
                .map_err(|e| CliError::Usage(format!("--capabilities: {e}")))?;
            add(&a.dir.out, &a.name, Role::Worker, capabilities)
        }
        AdminCommand::AddUser(a) => {
            let role = match a.role {
                UserRole::Scheduler => Role::Scheduler,
                UserRole::Operator => Role::Operator,
                UserRole::Observer => Role::Observer,
            };
            add(&a.dir.out, &a.name, role, TagSet::new())
        }
        AdminCommand::Authorization(d) => {
            let reg = Registry::load(&hosts_file(&d.out)).context("reading the hosts file")?;
            print!("{}", render::authorization_block(&reg));
            Ok(())
        }
    }
}

fn add(dir: &Path, name: &str, role: Role, capabilities: TagSet) -> Result<(), CliError> {
    let name = identity::parse_name(name).map_err(|e| CliError::Usage(e.to_string()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let hosts = hosts_file(dir);
    let mut reg = Registry::load_or_default(&hosts).context("reading the hosts file")?;
    if let Some(old) = reg.identities.get(&name) {
        return Err(CliError::Usage(format!(
            "name: {name:?} is already known (as {}); pick another name",
            old.role
        )));
    }
    let seed_path = dir.join(format!("{name}.nk"));
    let id = identity::generate().context("generating the identity")?;
    id.write_seed(&seed_path).context("writing the seed")?;
    let pub_path = dir.join(format!("{name}.pub"));
    std::fs::write(&pub_path, format!("{}\n", id.public_key()))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    reg.add(
        name.clone(),
        Entry {
            role,
            public_key: id.public_key().to_string(),
            capabilities,
        },
    )
    .context("recording the identity")?;
    reg.save(&hosts).context("writing the hosts file")?;
    let block = render::authorization_block(&reg);
    let auth_path = dir.join("authorization.conf");
    std::fs::write(&auth_path, &block)
        .with_context(|| format!("writing {}", auth_path.display()))?;
    eprintln!(
        "{role} {name}: public key {}\n  seed: {} (mode 0600; copy it to that machine only)\n  connect with: --nats-nkey {} --inbox-prefix {}\n  hosts file: {}\n  server block: {} (also below)",
        id.public_key(),
        seed_path.display(),
        seed_path.display(),
        identity::inbox_prefix(&name),
        hosts.display(),
        auth_path.display(),
    );
    print!("{block}");
    Ok(())
}
