//! The process-wide Prometheus recorder: installed once, rendered by the admin server's
//! `/metrics` (the exporter's own HTTP listener is not used).

use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// How often the upkeep thread drains histogram buckets. `install_recorder` does not spawn the
/// exporter's own upkeep task, and without upkeep histogram samples would grow without bound.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The installed handle. A `Mutex<Option<_>>` rather than a `OnceLock` because installation is
/// fallible and `OnceLock::get_or_try_init` is not stable; the lock is only taken at start-up.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// Another `metrics` recorder was installed in this process before ours.
    #[error("could not install the Prometheus metrics recorder: {0}")]
    Install(#[from] BuildError),
    /// The OS refused to start the upkeep thread.
    #[error("could not start the metrics upkeep thread: {0}")]
    Upkeep(#[source] std::io::Error),
}

/// Installs the global Prometheus recorder (once per process) and registers the description of
/// every metric in [`super::names`]. Later calls return a clone of the same handle, so tests and
/// the binary can both call it freely.
pub fn install() -> Result<PrometheusHandle, RecorderError> {
    // A poisoned lock only means a previous caller panicked mid-install; the Option inside is
    // still either None or a valid handle, so carrying on is sound.
    let mut slot = HANDLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    // Stored before the upkeep thread starts: the recorder is already global, so a retry after
    // a failed spawn must get this handle rather than an "already installed" error.
    *slot = Some(handle.clone());
    super::describe_all();

    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("pgmemo-metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .map_err(RecorderError::Upkeep)?;
    Ok(handle)
}
