//! The settings probe's steps in the session: when one is due (idle, after a settings change
//! or a reload), the login memo that spares it, the custom setting names it reads first, and
//! what its answer changes (the fingerprint, `statement_timeout`, the session's context).

use super::*;

/// The settings probe's state in one session.
pub(super) struct SettingsProbe {
    /// The probe in flight: its reader.
    pub(super) reader: Option<ProbeReader>,
    pub(super) needed: bool,
    /// The server configuration generation when the last probe was sent: a reload seen
    /// since may have changed settings this session did not SET (see `lookup`).
    pub(super) config: u64,
    /// Probes that failed in a row (a cancel that hit the probe, a statement_timeout, a
    /// replication connection): retried a few times, then the session stays uncached.
    pub(super) failures: u8,
    /// The login key while nothing of the client's has reached the server: the first
    /// settings may then come from the login memo (see [`login`]).
    pub(super) login_key: Option<Arc<[u8]>>,
    /// The probe in flight is a login probe: its result goes to the memo, with the epoch
    /// read when it was sent.
    pub(super) login_probe: Option<(Arc<[u8]>, u64)>,
    /// The custom setting names are being read for the next probe.
    pub(super) names_fetching: bool,
    /// The names read for the next probe.
    pub(super) catalog_names: Option<SettingNames>,
    /// The probe in flight was cancelled (57014), and how many were in a row.
    pub(super) cancelled: bool,
    pub(super) cancels: u8,
}

impl SettingsProbe {
    /// Whether another probe may be tried (not after repeated failures: the session then
    /// stays uncached).
    pub(super) fn may_retry(&self) -> bool {
        self.failures < MAX_PROBE_FAILURES
    }

    /// A fresh login: a probe is due (or the login memo answers it, by `login_key`).
    pub(super) fn new(login_key: Arc<[u8]>) -> Self {
        Self {
            reader: None,
            needed: true,
            config: 0,
            failures: 0,
            login_key: Some(login_key),
            login_probe: None,
            names_fetching: false,
            catalog_names: None,
            cancelled: false,
            cancels: 0,
        }
    }
}

impl CacheSession {
    /// While a probe is in flight the relay holds client frames back (their plans need the
    /// probe's answer) and shows every backend frame here whole.
    pub fn probing(&self) -> bool {
        self.probe.reader.is_some() || self.probe.names_fetching || self.through_running()
    }

    /// Backend frames must be shown whole (a capture or probe reads them).
    pub fn inspects_all_backend(&self) -> bool {
        self.probe.reader.is_some()
            || self.through_running()
            || self.capture.is_some()
            || self.describe == resume::Describe::StripReply
    }

    /// Backend tags write tracking and the fingerprint always need to see.
    pub fn inspects_backend(tag: u8) -> bool {
        matches!(
            tag,
            backend::COMMAND_COMPLETE
                | backend::EMPTY_QUERY_RESPONSE
                | backend::PORTAL_SUSPENDED
                | backend::ERROR_RESPONSE
                | backend::READY_FOR_QUERY
                | backend::PARAMETER_STATUS
        )
    }

    /// What the settings probe needs now, if one is due and the session is idle: to be sent
    /// upstream, or first the database's custom setting names from the catalog (the relay
    /// polls that future and hands its answer to [`names_ready`](Self::names_ready)). A
    /// fresh login whose result is remembered needs neither (see `login`).
    /// With the cache disabled no probe is sent (pgmemo then adds nothing of its own to the
    /// session); writes are still tracked, conservatively, without a context.
    pub fn probe_query(&mut self, state: &SessionState) -> ProbeStep {
        if let Some(batch) = self.take_through_batch() {
            // A write-through's re-runs (see `through`): the session is idle now.
            return ProbeStep::Send(batch);
        }
        if !self.probe.needed || self.probing() || !state.is_idle() {
            return ProbeStep::Idle;
        }
        if !self.app.cache_enabled() {
            return ProbeStep::Idle;
        }
        // The epoch first: the configuration generation moves before it (see Invalidator).
        let epoch = self.app.services.cache.versions().epoch();
        let config = self.app.services.invalidator.config_generation();
        if let Some(key) = self.probe.login_key.as_ref()
            && let Some(known) = self.app.services.logins.get(key, epoch, config)
        {
            self.probe.login_key = None;
            self.probe.needed = false;
            self.probe.config = config;
            self.metrics.probes_remembered.increment(1);
            self.apply_probe(known);
            return ProbeStep::Idle;
        }
        let catalog = &self.app.services.catalog;
        let names = match self
            .probe
            .catalog_names
            .take()
            .or_else(|| catalog.setting_names_now(&self.database))
        {
            Some(SettingNames::Known(names)) => names,
            Some(SettingNames::Unusable(why)) => {
                tracing::debug!(why, "settings probe: custom setting names unusable");
                self.probe.needed = false;
                self.on_probe_done(None);
                return ProbeStep::Idle;
            }
            None => {
                self.probe.names_fetching = true;
                let catalog = Arc::clone(catalog);
                let db = Arc::clone(&self.database);
                return ProbeStep::Fetch(Box::pin(async move { catalog.setting_names(&db).await }));
            }
        };
        if let Some(key) = self.probe.login_key.take() {
            self.probe.login_probe = Some((key, epoch));
        }
        self.probe.needed = false;
        self.probe.config = config;
        self.probe.reader = Some(ProbeReader::default());
        ProbeStep::Send(probe::query(&names, &self.custom_names))
    }

    /// The database's custom setting names arrived (or could not be read).
    pub fn names_ready(&mut self, names: Result<SettingNames, CatalogError>) {
        self.probe.names_fetching = false;
        match names {
            Ok(names) => self.probe.catalog_names = Some(names),
            Err(e) => {
                tracing::debug!(error = %e, "settings probe: custom setting names not read");
                self.probe.needed = false;
                self.on_probe_done(None);
            }
        }
    }

    /// Client bytes are about to be processed: from now on the session's settings may differ
    /// from those of a fresh login.
    pub fn client_spoke(&mut self) {
        self.probe.login_key = None;
    }

    pub(super) fn on_probe_done(&mut self, result: Option<ProbeResult>) {
        let cancelled = std::mem::take(&mut self.probe.cancelled);
        let Some(r) = result else {
            self.metrics.probes_failed.increment(1);
            if cancelled && self.probe.cancels < MAX_PROBE_CANCELS {
                self.probe.cancels += 1;
            } else {
                self.probe.failures = self.probe.failures.saturating_add(1);
            }
            self.probe.needed = self.probe.may_retry();
            self.cx = None;
            self.cx_id = 0;
            self.fingerprint.taint("settings probe failed");
            return;
        };
        self.metrics.probes_ok.increment(1);
        self.apply_probe(r);
    }

    /// The session's settings are those of `r` (a probe's answer, or a remembered login's).
    pub(super) fn apply_probe(&mut self, r: ProbeResult) {
        self.probe.failures = 0;
        self.probe.cancels = 0;
        self.opted_out = r.opted_out;
        self.encoding_ok =
            probe::encoding_is_safe(&r.client_encoding) && r.standard_conforming_strings;
        self.utf8 = is_utf8(&r.client_encoding);
        self.app
            .services
            .invalidator
            .learn_database(&r.database, r.db_oid);
        let cx = Context {
            database: r.database.as_str().into(),
            db_oid: r.db_oid,
            current_user: r.current_user.as_str().into(),
            search_path: r.search_path.as_str().into(),
            has_temp: r.has_temp,
        };
        self.cx_id = cx.id();
        self.cx = Some(Arc::new(cx));
        // Nothing is in flight at a probe: plans from here on are made for this context.
        self.tracker.context_unknown = false;
        self.statement_timeout = r
            .settings
            .iter()
            .find(|(n, _)| n == "statement_timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        self.fingerprint.reestablished(&r.settings);
        self.fp_digest = self.fingerprint.bytes().map(digest);
    }
}

/// Whether a `client_encoding` value names UTF-8.
pub(super) fn is_utf8(encoding: &str) -> bool {
    matches!(
        encoding
            .to_ascii_uppercase()
            .replace(['-', '_'], "")
            .as_str(),
        "UTF8" | "UNICODE"
    )
}
