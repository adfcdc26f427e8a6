//! The PostgreSQL installation the tests use: where its binaries are, which OS user runs
//! them, and a cached `initdb` result that each throwaway server copies (initdb takes
//! ~2 s here, a copy ~0.1 s, and every test starts its own server).

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::tls::set_mode;

/// Bump when the initdb arguments change, so old cached templates are not reused.
const TEMPLATE_VERSION: &str = "v1";

/// The directory holding initdb/pg_ctl/postgres/psql: `$PGMEMO_PG_BIN`, else the
/// directory of `initdb` found on PATH (symlinks resolved, so all tools come from one
/// installation), else the newest `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGMEMO_PG_BIN") {
            return PathBuf::from(dir);
        }
        if let Some(dir) = initdb_on_path() {
            return dir;
        }
        newest_debian_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or \
                 in /usr/lib/postgresql/*/bin: install the `postgresql` package \
                 (apt-get install postgresql) or set PGMEMO_PG_BIN"
            )
        })
    })
}

fn initdb_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let candidate = dir.join("initdb");
        if !candidate.is_file() {
            return None;
        }
        let real = std::fs::canonicalize(&candidate).ok()?;
        let parent = real.parent()?;
        parent
            .join("pg_ctl")
            .is_file()
            .then(|| parent.to_path_buf())
    })
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The (uid, gid) to run the server as: `postgres` when the tests run as root (Postgres
/// refuses root), `None` (ourselves) otherwise.
pub fn server_owner() -> Option<(u32, u32)> {
    // /proc/self belongs to the effective uid of this process.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    root.then(postgres_ids)
}

fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next() != Some("postgres") {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .expect(
            "tests run as root but there is no `postgres` OS user to run PostgreSQL as \
             (install the `postgresql` package, which creates it)",
        )
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// A command for a server binary, run as `owner` through `runuser` when given, from
/// `cwd` (a dir that user can read, not root's cwd).
pub fn server_command(name: &str, owner: Option<(u32, u32)>, cwd: &Path) -> Command {
    let bin = bin_dir().join(name);
    let mut cmd = if owner.is_some() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    };
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

/// Creates `data_dir` as a fresh cluster: a copy of the cached initdb template.
pub fn init_data_dir(data_dir: &Path, owner: Option<(u32, u32)>) {
    let template = template_dir(owner);
    if !template.join("data").join("PG_VERSION").is_file() {
        build_template(&template, owner);
    }
    // `cp -a` keeps the owner and the 0700 mode Postgres insists on.
    let out = Command::new("cp")
        .arg("-a")
        .arg(template.join("data"))
        .arg(data_dir)
        .output()
        .expect("run cp -a");
    if !out.status.success() {
        panic!(
            "copying the initdb template {} failed: {}",
            template.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn template_dir(owner: Option<(u32, u32)>) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (bin_dir(), owner, TEMPLATE_VERSION).hash(&mut hasher);
    PathBuf::from(format!("/tmp/pgmemo-initdb-{:016x}", hasher.finish()))
}

/// Runs initdb into a private dir and renames it into place, so concurrent test
/// processes never see a half-written template (the loser of the race discards its own).
fn build_template(template: &Path, owner: Option<(u32, u32)>) {
    let build = tempfile::Builder::new()
        .prefix("pgmemo-initdb-build-")
        .tempdir_in("/tmp")
        .expect("create initdb build dir");
    set_mode(build.path(), 0o755);
    if let Some((uid, gid)) = owner {
        chown(build.path(), uid, gid);
    }
    let out = server_command("initdb", owner, build.path())
        .arg("-D")
        .arg(build.path().join("data"))
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ])
        .output()
        .expect("run initdb");
    if !out.status.success() {
        panic!(
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if std::fs::rename(build.path(), template).is_ok() {
        // Renamed away: nothing left for the TempDir to delete.
        let _ = build.keep();
    } else if !template.join("data").join("PG_VERSION").is_file() {
        panic!(
            "could not install the initdb template at {}",
            template.display()
        );
    }
}
