//! Telemetry in one place: every metric name pgmemo exports, their descriptions, the Prometheus
//! recorder, and tracing initialisation.

pub mod recorder;
pub mod runtimes;
pub mod striped;

use metrics::{Unit, describe_counter, describe_gauge};

/// Registers a description (and unit) for every metric in [`names`], so `/metrics` carries
/// `# HELP` lines. Called by [`recorder::install`]; descriptions given before a recorder is
/// installed are lost, so this runs right after installation.
pub fn describe_all() {
    describe_connections();
    describe_cache();
    describe_cdc();
    describe_l2();
    describe_session();
    describe_behind();
}

/// Write-behind: the queue, the flushes, dead letters.
fn describe_behind() {
    use metrics::describe_histogram;
    describe_counter!(
        names::BEHIND_QUEUED,
        "Writes acknowledged from the write-behind queue, by kind."
    );
    describe_counter!(
        names::BEHIND_FORWARDED,
        "Writes to write-behind tables run synchronously instead, by reason."
    );
    describe_gauge!(
        names::BEHIND_QUEUE_ENTRIES,
        "Acknowledged write-behind writes not yet applied."
    );
    describe_gauge!(
        names::BEHIND_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of the acknowledged write-behind writes not yet applied."
    );
    describe_gauge!(
        names::BEHIND_OLDEST_SECONDS,
        Unit::Seconds,
        "Age of the oldest write-behind write not yet applied."
    );
    describe_histogram!(
        names::BEHIND_FLUSH_SECONDS,
        Unit::Seconds,
        "Time one write-behind batch took to apply."
    );
    describe_histogram!(
        names::BEHIND_BATCH_ENTRIES,
        "Writes per committed write-behind batch."
    );
    describe_histogram!(
        names::BEHIND_JOURNAL_SYNC_SECONDS,
        Unit::Seconds,
        "Time one write-behind journal group took to write and fdatasync."
    );
    describe_histogram!(
        names::BEHIND_JOURNAL_GROUP_RECORDS,
        "Writes per write-behind journal group (one fdatasync each)."
    );
    describe_histogram!(
        names::BEHIND_LAG_SECONDS,
        Unit::Seconds,
        "Time from a write-behind write's acknowledgement to the commit that applied it."
    );
    describe_counter!(names::BEHIND_APPLIED, "Write-behind writes applied.");
    describe_counter!(
        names::BEHIND_DEAD_LETTERS,
        "Write-behind writes kept as dead letters, by kind."
    );
    describe_gauge!(
        names::BEHIND_DEAD_LETTERS_KEPT,
        "Write-behind dead letters kept."
    );
    describe_counter!(
        names::BEHIND_RETRIES,
        "Write-behind batches retried after a failure not tied to one write."
    );
    describe_counter!(
        names::BEHIND_BARRIER,
        "Statements that waited for the write-behind queue before running, by result."
    );
}

/// Client connections, bytes, statements, upstream connects, cancels, reloads.
fn describe_connections() {
    describe_counter!(
        names::CLIENT_CONNECTIONS_TOTAL,
        "Client connections accepted."
    );
    describe_gauge!(
        names::CLIENT_CONNECTIONS_ACTIVE,
        "Client sessions currently open."
    );
    describe_gauge!(
        names::RUNTIME_ALIVE_TASKS,
        "Tokio tasks alive, by runtime (main, or the session workers summed)."
    );
    describe_counter!(
        names::CLIENT_CONNECTIONS_REJECTED,
        "Client connections refused or dropped before a session started, by reason."
    );
    describe_counter!(
        names::CLIENT_BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received from clients."
    );
    describe_counter!(
        names::CLIENT_BYTES_SENT,
        Unit::Bytes,
        "Bytes sent to clients."
    );
    describe_counter!(
        names::STATEMENTS_TOTAL,
        "Statements relayed (Query, Execute or FunctionCall messages), by protocol."
    );
    describe_counter!(
        names::UPSTREAM_CONNECT_ERRORS,
        "Failed upstream connection attempts, by kind."
    );
    describe_counter!(
        names::CLIENT_PROTOCOL_ERRORS,
        "Client frames refused as malformed or oversized (08P01)."
    );
    describe_counter!(
        names::CANCEL_REQUESTS,
        "CancelRequests received, by result."
    );
    describe_gauge!(
        names::CANCEL_REQUESTS_HELD,
        "CancelRequests held while pgmemo's own work occupied the session's upstream connection, not yet routed."
    );
    describe_counter!(names::CONFIG_RELOADS, "Configuration reloads, by result.");
}

/// The L1 cache: lookups, stores, evictions, size, fills, bumps, bypasses.
fn describe_cache() {
    describe_counter!(names::CACHE_HITS, "Cache lookups answered from L1.");
    describe_counter!(
        names::CACHE_MISSES,
        "Cache lookups that found nothing (leading a fill or joining one)."
    );
    describe_counter!(
        names::CACHE_KEY_COLLISIONS,
        "Cache hits refused because the entry's key check differed (128-bit key collision)."
    );
    describe_counter!(names::CACHE_STORES, "Results stored in the L1 cache.");
    describe_counter!(
        names::CACHE_STORE_REFUSALS,
        "Results not stored in the cache, by reason."
    );
    describe_counter!(
        names::CACHE_EVICTIONS,
        "Entries that left the L1 cache, by cause."
    );
    describe_gauge!(names::CACHE_ENTRIES, "Entries held in the L1 cache.");
    describe_gauge!(
        names::CACHE_BYTES,
        Unit::Bytes,
        "Bytes held in the L1 cache, as weighed (frames plus bookkeeping)."
    );
    describe_counter!(
        names::CACHE_FILL_WAITS,
        "Coalesced waits for another session's cache fill, by result."
    );
    describe_counter!(
        names::CACHE_FILLS_UNCOALESCED,
        "Cache misses not coalesced because the in-flight fill table was full."
    );
    describe_counter!(
        names::CACHE_EPOCH_BUMPS,
        "Epoch bumps (every cached result made unreachable), by cause."
    );
    describe_counter!(
        names::CACHE_ADAPTIVE_BYPASSES,
        "Times a statement shape's sampled hit ratio fell below cache.min_hit_ratio and it skipped the cache for a span."
    );
    describe_counter!(
        names::CACHE_BYPASSES,
        "Reads relayed without using the cache, by reason."
    );
    describe_counter!(
        names::CACHE_TAG_BUMPS,
        "Relation versions bumped, by source."
    );
    describe_counter!(
        names::CACHE_INVALIDATIONS,
        "Invalidations by granularity: table (rows unknown) or row (known by primary key)."
    );
    describe_counter!(
        names::WRITE_THROUGH,
        "Results re-run after a commit to a write-through table, by result: stored, failed, other_session (read under another fingerprint: re-run in the background), background (a shared tier, or the writer's connection was not free: re-run in the background), busy (being filled, cached already), plan_stale, raced (a write came while it ran: not stored), late (read again while the write ran), unread (its last write-through refresh was never read: not re-run again)."
    );
    describe_counter!(
        names::WRITE_THROUGH_PIPELINED,
        "Write-through re-runs sent to PostgreSQL right behind the autocommit write they refresh (in the same round trip), not after its reply."
    );
    describe_counter!(
        names::WRITE_THROUGH_OVER_BUDGET,
        "Write-through re-runs in the background still running when refresh.time_budget released the writer's acknowledgement (they still run and store)."
    );
    describe_counter!(
        names::REFRESH,
        "Results recomputed in the background under their own login and fingerprint, by cause and result: stored, failed, busy, plan_stale, no_login (pgmemo has no login for the role), login_failed, fingerprint (the session changed settings after login), queue_full, over_share (refresh_adaptive: refreshes at refresh.max_share of upstream queries), too_large (refresh-ahead request over 16 KiB), raced (a write came while it ran: not stored), shared_unavailable (Redis did not answer), not_serving (the cache does not serve the database now)."
    );
    describe_counter!(
        names::VERIFY_CHECKS,
        "Verify mode (cache.verify_sample): sampled cache hits re-executed on PostgreSQL under the entry's own login and fingerprint, by result: matched (same bytes), mismatched (different while nothing pgmemo knows of changed the result's tables: stale or wrong), raced (different, but a write or invalidation moved the result's versions, or the entry left the cache, since the hit), skipped (not checked: see pgmemo_verify_skipped_total), failed (the re-execution failed or answered something else than rows)."
    );
    describe_counter!(
        names::VERIFY_MISMATCHES,
        "Verify mode: mismatched checks, once per table the result was read from (schema.name)."
    );
    describe_counter!(
        names::VERIFY_SKIPPED,
        "Verify mode: sampled hits not checked, by reason: full (checks in flight at their bound), too_large (request over 16 KiB), not_running (the checker has not started), entry_gone (the entry left the cache before the check ran), no_login, login_failed, fingerprint (a fresh login does not reproduce the session's settings), not_serving."
    );
    describe_counter!(
        names::REFRESH_WASTED,
        "Refreshed results that left the cache (expired, evicted, replaced, flushed) before any client read them, by cause: write (write-through), ahead (refresh-ahead)."
    );
    describe_counter!(
        names::WARM,
        "Results warmed (run and stored before clients ask), by source (config: a [[warm]] entry; hot_keys: the previous run's hot keys, and after start-up also this run's) and result: stored, failed, refused (not a read pgmemo caches for that session), no_login, login_failed, fingerprint (the login does not reproduce the recorded fingerprint), busy (cached or being filled already), plan_stale, not_serving (the database's change stream does not serve), not_stored (a write came in between), timeout (warming.timeout passed first)."
    );
    describe_counter!(
        names::WARM_RUNS,
        "Warming runs, by trigger: start (start-up), flush (a whole-cache flush), invalidation (DDL through pgmemo, a change stream resynchronised, a catalog or server configuration change)."
    );
    describe_counter!(
        names::CACHE_PINNED_LOOKUPS,
        "Cacheable lookups by whether their relations were pinned to rows (rows) or not (table)."
    );
    metrics::describe_histogram!(
        names::CACHE_HIT_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer a cache hit (Query received to response queued)."
    );
}

/// Change data capture: stream state, lag, transactions, reconnects, waits.
fn describe_cdc() {
    describe_gauge!(
        names::CDC_STATE,
        "1 for the state each covered database's change stream is in (only streaming serves cached results)."
    );
    describe_gauge!(
        names::CDC_LAG_BYTES,
        Unit::Bytes,
        "WAL bytes between the server's current position and what the change stream has applied."
    );
    describe_gauge!(
        names::CDC_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest WAL position the change stream has not applied (0 when caught up)."
    );
    describe_gauge!(
        names::CDC_FLUSH_DELAY_BOUND_SECONDS,
        Unit::Seconds,
        "Longest a commit can be visible before the change stream can carry it (synchronous_commit = off: 3 x wal_writer_delay; else 0)."
    );
    describe_counter!(
        names::CDC_TRANSACTIONS,
        "Committed transactions seen in the change stream."
    );
    describe_counter!(
        names::CDC_RELATIONS,
        "Relations changed by transactions seen in the change stream."
    );
    describe_counter!(
        names::CDC_RECONNECTS,
        "Replication connections lost or refused, by reason."
    );
    describe_counter!(
        names::CDC_ACK_WAITS,
        "Acknowledgements of writes with invisible effects held for the change stream, by result."
    );
    describe_gauge!(
        names::CDC_LEADER,
        "1 while this instance holds the CDC lease in Redis and follows the change streams."
    );
    metrics::describe_histogram!(
        names::CDC_COMMIT_TO_BUMP_SECONDS,
        metrics::Unit::Seconds,
        "From a streamed transaction's commit on the server to its bump in pgmemo."
    );
}

/// The shared tier on Redis: lookups, writes, bumps, breaker, subscription.
fn describe_l2() {
    describe_counter!(
        names::L2_LOOKUPS,
        "Shared-cache (Redis) lookups, by result."
    );
    describe_counter!(names::L2_WRITES, "Shared-cache (Redis) stores, by result.");
    describe_counter!(
        names::L2_BYTES,
        Unit::Bytes,
        "Bytes of results sealed for the shared cache, before (raw) and after (stored) compression."
    );
    describe_gauge!(
        names::L2_BREAKER_STATE,
        "The Redis circuit breaker: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        names::L2_BUMPS,
        "Relation/epoch bumps sent to Redis, by result (failed ones are retried)."
    );
    describe_counter!(
        names::L2_COUNTER_READS,
        "Reads of the shared version counters from Redis, by result."
    );
    describe_gauge!(
        names::L2_SUBSCRIBED,
        "1 while the Redis bump subscription (fast consistency) is up."
    );
    describe_gauge!(
        names::L2_USABLE,
        "1 while the shared cache is usable (Redis eviction policy checked and safe)."
    );
    describe_counter!(
        names::L2_BREAKER_CHANGES,
        "Redis circuit breaker state changes, by the state entered."
    );
}

/// Sessions and the rest: latencies, migrations, probes, plans, replays, admin.
fn describe_session() {
    metrics::describe_histogram!(
        names::UPSTREAM_QUERY_SECONDS,
        metrics::Unit::Seconds,
        "Time the upstream took for a missed cacheable read."
    );
    describe_counter!(
        names::SESSION_MIGRATIONS,
        "Sessions moved to the worker on their client's CPU (server.pin_workers)."
    );
    describe_counter!(
        names::SESSION_PROBES,
        "Session settings probes run on the upstream connection, by result."
    );
    describe_counter!(
        names::PLANS,
        "Statement plans computed (analysis + catalog), by outcome."
    );
    describe_counter!(
        names::STATEMENT_REPLAYS,
        "Parse messages answered from the cache and then sent upstream by pgmemo, by kind."
    );
    describe_counter!(
        names::ADMIN_INVALIDATIONS,
        "Manual invalidations (POST /invalidate, POST /flush, SIGUSR1), by scope and result."
    );
    describe_counter!(
        names::ADMIN_UNAUTHORIZED,
        "Admin requests refused (401) for a missing or wrong bearer token."
    );
}

pub mod names {
    //! Metric names (Prometheus). Labels are documented beside each name.
    /// counter: client connections accepted.
    pub const CLIENT_CONNECTIONS_TOTAL: &str = "pgmemo_client_connections_total";
    /// gauge: client sessions currently open.
    pub const CLIENT_CONNECTIONS_ACTIVE: &str = "pgmemo_client_connections_active";
    /// gauge, label `runtime` (`main`: background tasks and the accept loop; `workers`: the
    /// session workers, summed): tokio tasks alive, set at each scrape.
    pub const RUNTIME_ALIVE_TASKS: &str = "pgmemo_runtime_alive_tasks";
    /// counter, label `reason` (`max_connections`, `max_connections_unanswered`,
    /// `startup_timeout`, `protocol`, `tls`, `tls_required`):
    /// client connections refused or dropped before a session started.
    pub const CLIENT_CONNECTIONS_REJECTED: &str = "pgmemo_client_connections_rejected_total";
    /// counter: bytes received from clients.
    pub const CLIENT_BYTES_RECEIVED: &str = "pgmemo_client_bytes_received_total";
    /// counter: bytes sent to clients.
    pub const CLIENT_BYTES_SENT: &str = "pgmemo_client_bytes_sent_total";
    /// counter, label `protocol` (`simple`, `extended`, `function_call`): statements relayed
    /// (one per Query message, Execute message or FunctionCall).
    pub const STATEMENTS_TOTAL: &str = "pgmemo_statements_total";
    /// counter, label `kind` (`tcp`, `tls`, `timeout`): failed upstream connection attempts.
    pub const UPSTREAM_CONNECT_ERRORS: &str = "pgmemo_upstream_connect_errors_total";
    /// counter: client frames refused as malformed or oversized (08P01).
    pub const CLIENT_PROTOCOL_ERRORS: &str = "pgmemo_client_protocol_errors_total";
    /// counter, label `result` (`forwarded`, `held_statement`, `unknown_key`, `failed`,
    /// `repeated`): CancelRequests (`held_statement`: it ended a statement pgmemo held in a
    /// fill wait; `repeated`: a request sent again because its statement may not have been
    /// running yet when it first arrived).
    pub const CANCEL_REQUESTS: &str = "pgmemo_cancel_requests_total";
    /// gauge: CancelRequests held for their session's relay, not yet routed: it reads what
    /// the client sent first, and waits while pgmemo's own work (the settings probe, a plan,
    /// a replayed Parse) occupies the session's upstream connection.
    pub const CANCEL_REQUESTS_HELD: &str = "pgmemo_cancel_requests_held";
    /// counter, label `result` (`ok`, `error`): configuration reloads (SIGHUP).
    pub const CONFIG_RELOADS: &str = "pgmemo_config_reloads_total";
    /// counter: cache lookups answered from L1.
    pub const CACHE_HITS: &str = "pgmemo_cache_hits_total";
    /// counter: cache lookups that found nothing (whether they led a fill or joined one).
    pub const CACHE_MISSES: &str = "pgmemo_cache_misses_total";
    /// counter: hits refused because the entry's key check differed (a 128-bit collision).
    pub const CACHE_KEY_COLLISIONS: &str = "pgmemo_cache_key_collisions_total";
    /// counter: results stored in the L1 cache.
    pub const CACHE_STORES: &str = "pgmemo_cache_stores_total";
    /// counter, label `reason` (`too_large`, `stale`): results not stored.
    pub const CACHE_STORE_REFUSALS: &str = "pgmemo_cache_store_refusals_total";
    /// counter, label `cause` (`size`, `expired`, `explicit`, `replaced`): entries that left
    /// the L1 cache (`size` includes entries refused admission).
    pub const CACHE_EVICTIONS: &str = "pgmemo_cache_evictions_total";
    /// gauge: entries held in the L1 cache.
    pub const CACHE_ENTRIES: &str = "pgmemo_cache_entries";
    /// gauge: bytes held in the L1 cache, as weighed (frames plus bookkeeping).
    pub const CACHE_BYTES: &str = "pgmemo_cache_bytes";
    /// counter, label `result` (`filled`, `leader_gave_up`, `timed_out`, `cancelled`):
    /// coalesced waits for another session's fill.
    pub const CACHE_FILL_WAITS: &str = "pgmemo_cache_fill_waits_total";
    /// counter: misses not coalesced because the in-flight fill table was full.
    pub const CACHE_FILLS_UNCOALESCED: &str = "pgmemo_cache_fills_uncoalesced_total";
    /// counter, label `cause` (`unparsed_write`, `side_effects`, `catalog_function`,
    /// `catalog_role`, `unknown_gid`, `admin`, `tag_limit`, `ddl`, `untracked`, `cdc_resync`,
    /// `cdc_overflow`, `side_closed`): epoch bumps.
    pub const CACHE_EPOCH_BUMPS: &str = "pgmemo_cache_epoch_bumps_total";
    /// counter: statement shapes switched to skipping the cache for a span (adaptive bypass).
    pub const CACHE_ADAPTIVE_BYPASSES: &str = "pgmemo_cache_adaptive_bypasses_total";
    /// counter, label `reason`: cacheable-looking reads relayed without using the cache.
    pub const CACHE_BYPASSES: &str = "pgmemo_cache_bypasses_total";
    /// counter, label `source` (`write`, `catalog`, `admin`, `prepared`, `cdc`): relation
    /// tags bumped.
    pub const CACHE_TAG_BUMPS: &str = "pgmemo_cache_tag_bumps_total";
    /// counter, label `granularity` (`table`: a relation written with rows not known by key;
    /// `row`: a row written, known by its primary key): what writes invalidated.
    pub const CACHE_INVALIDATIONS: &str = "pgmemo_cache_invalidations_total";
    /// counter, label `pinned` (`rows`, `table`): cacheable lookups by whether every relation
    /// they read was pinned to rows by its primary key (`rows`) or not.
    pub const CACHE_PINNED_LOOKUPS: &str = "pgmemo_cache_pinned_lookups_total";
    /// counter, label `result` (`stored`, `failed`, `other_session`, `background`, `busy`,
    /// `plan_stale`, `raced`, `late`, `unread`): results re-run on the writer's connection after a commit to a
    /// write-through table (`other_session`: read under another fingerprint, `background`:
    /// a shared tier, or the connection was not free; both handed to the background
    /// refresher).
    pub const WRITE_THROUGH: &str = "pgmemo_write_through_total";
    /// counter: write-through re-runs sent right behind the autocommit write they refresh
    /// (`session::cache_side::pipelined`), not after its ReadyForQuery.
    pub const WRITE_THROUGH_PIPELINED: &str = "pgmemo_write_through_pipelined_total";
    /// counter, label `kind` (`insert`, `increment`): writes acknowledged from the
    /// write-behind queue.
    pub const BEHIND_QUEUED: &str = "pgmemo_behind_queued_total";
    /// counter, label `reason`: writes to `write = "behind"` tables forwarded synchronously
    /// instead (`queue_full`, `queue_failed`, `not_idle`, `settings_unknown`, `encoding`,
    /// `unnamed_statement`, `session_opt_out`).
    pub const BEHIND_FORWARDED: &str = "pgmemo_behind_forwarded_total";
    /// gauge: queued (acknowledged) writes not yet applied.
    pub const BEHIND_QUEUE_ENTRIES: &str = "pgmemo_behind_queue_entries";
    /// gauge: bytes of the queued writes not yet applied.
    pub const BEHIND_QUEUE_BYTES: &str = "pgmemo_behind_queue_bytes";
    /// gauge: age in seconds of the oldest queued write not yet applied (0 when none).
    pub const BEHIND_OLDEST_SECONDS: &str = "pgmemo_behind_oldest_seconds";
    /// histogram: seconds one batch took to apply (send to commit).
    pub const BEHIND_FLUSH_SECONDS: &str = "pgmemo_behind_flush_seconds";
    /// histogram: writes per committed batch.
    pub const BEHIND_BATCH_ENTRIES: &str = "pgmemo_behind_batch_entries";
    /// histogram: seconds one journal group took to write and fdatasync.
    pub const BEHIND_JOURNAL_SYNC_SECONDS: &str = "pgmemo_behind_journal_sync_seconds";
    /// histogram: writes per journal group (they share one fdatasync).
    pub const BEHIND_JOURNAL_GROUP_RECORDS: &str = "pgmemo_behind_journal_group_records";
    /// histogram: seconds from a write's acknowledgement to the commit that applied it.
    pub const BEHIND_LAG_SECONDS: &str = "pgmemo_behind_lag_seconds";
    /// counter: queued writes applied.
    pub const BEHIND_APPLIED: &str = "pgmemo_behind_applied_total";
    /// counter, label `kind` (`rejected`: the database refused it; `no_row`: an increment
    /// matched no row): queued writes moved to the dead letters.
    pub const BEHIND_DEAD_LETTERS: &str = "pgmemo_behind_dead_letters_total";
    /// gauge: dead letters kept.
    pub const BEHIND_DEAD_LETTERS_KEPT: &str = "pgmemo_behind_dead_letters";
    /// counter: batches that failed for a reason not tied to one write (connection, server
    /// restart), retried.
    pub const BEHIND_RETRIES: &str = "pgmemo_behind_retries_total";
    /// counter: statements that waited for queued writes before running (the barrier), by
    /// `result` (`applied`, `timeout`).
    pub const BEHIND_BARRIER: &str = "pgmemo_behind_barrier_total";
    /// counter: write-through re-runs handed to the background refresher before the
    /// writer's acknowledgement that had not ended when `refresh.time_budget` released it.
    pub const WRITE_THROUGH_OVER_BUDGET: &str = "pgmemo_write_through_over_budget_total";
    /// counter, labels `cause` (`write`, `ahead`), `result` (`stored`, `failed`, `busy`,
    /// `plan_stale`, `raced`, `no_login`, `login_failed`, `fingerprint`, `queue_full`,
    /// `over_share`, `too_large`, `shared_unavailable`, `not_serving`): results recomputed
    /// by the background refresher on pgmemo's own connections.
    pub const REFRESH: &str = "pgmemo_refresh_total";
    /// counter, label `result` (`matched`, `mismatched`, `raced`, `skipped`, `failed`):
    /// verify mode's checks of sampled hits.
    pub const VERIFY_CHECKS: &str = "pgmemo_verify_checks_total";
    /// counter, label `table` (`schema.name`): verify mode's mismatches per table read.
    pub const VERIFY_MISMATCHES: &str = "pgmemo_verify_mismatches_total";
    /// counter, label `reason`: sampled hits verify mode did not check.
    pub const VERIFY_SKIPPED: &str = "pgmemo_verify_skipped_total";
    /// counter, label `cause` (`write`, `ahead`): refreshed results that left the cache
    /// before any client read them.
    pub const REFRESH_WASTED: &str = "pgmemo_refresh_wasted_total";
    /// counter, labels `source` (`config`, `hot_keys`), `result` (`stored`, `failed`,
    /// `refused`, `no_login`, `login_failed`, `fingerprint`, `busy`, `plan_stale`,
    /// `not_serving`, `not_stored`, `timeout`): results warmed at start-up or after a
    /// whole-cache flush or invalidation.
    pub const WARM: &str = "pgmemo_warm_total";
    /// counter, label `trigger` (`start`, `flush`, `invalidation`): warming runs begun.
    pub const WARM_RUNS: &str = "pgmemo_warm_runs_total";
    /// gauge, labels `database`, `state` (`off`, `connecting`, `creating_slot`, `streaming`,
    /// `lagging`, `disconnected`): 1 for the state each covered database's change stream is
    /// in, 0 for the others. Only `streaming` serves cached results.
    pub const CDC_STATE: &str = "pgmemo_cdc_state";
    /// gauge, label `database`: WAL bytes between the server's current position and what
    /// the stream has applied.
    pub const CDC_LAG_BYTES: &str = "pgmemo_cdc_lag_bytes";
    /// gauge, label `database`: how long ago the server first reported the oldest WAL
    /// position the stream has not applied yet (0 when caught up).
    pub const CDC_LAG_SECONDS: &str = "pgmemo_cdc_lag_seconds";
    /// gauge, label `database`: the longest a commit can be visible on the server before
    /// the stream can carry it (3 × `wal_writer_delay` when sessions may commit with
    /// `synchronous_commit = off`, else 0), read at each stream connect; not part of
    /// `CDC_LAG_SECONDS`.
    pub const CDC_FLUSH_DELAY_BOUND_SECONDS: &str = "pgmemo_cdc_flush_delay_bound_seconds";
    /// counter, label `database`: committed transactions seen in the change stream.
    pub const CDC_TRANSACTIONS: &str = "pgmemo_cdc_transactions_total";
    /// counter, label `database`: relations changed by those transactions (before mapping
    /// to ancestors and FK closures).
    pub const CDC_RELATIONS: &str = "pgmemo_cdc_relations_total";
    /// counter, labels `database`, `reason`: replication connections lost or refused.
    pub const CDC_RECONNECTS: &str = "pgmemo_cdc_reconnects_total";
    /// counter, label `result` (`applied`, `timed_out`, `no_stream`): acknowledgements of
    /// writes with invisible effects held until the stream applied their commit.
    pub const CDC_ACK_WAITS: &str = "pgmemo_cdc_ack_waits_total";
    /// histogram (seconds): from a streamed transaction's commit on the server to its bump.
    pub const CDC_COMMIT_TO_BUMP_SECONDS: &str = "pgmemo_cdc_commit_to_bump_seconds";
    /// counter, label `result` (`hit`, `miss`, `error`, `refused`: an envelope that did not
    /// open, `breaker_open`: not asked): L2 lookups.
    pub const L2_LOOKUPS: &str = "pgmemo_l2_lookups_total";
    /// counter, label `result` (`written`, `dropped`: queue full, breaker open or failed):
    /// L2 stores.
    pub const L2_WRITES: &str = "pgmemo_l2_writes_total";
    /// counter, label `stage` (`raw`, `stored`): bytes of results sealed for the L2, before
    /// and after compression.
    pub const L2_BYTES: &str = "pgmemo_l2_bytes_total";
    /// gauge: the Redis circuit breaker (0 closed, 1 open, 2 half-open).
    pub const L2_BREAKER_STATE: &str = "pgmemo_l2_breaker_state";
    /// counter, label `to` (`closed`, `open`, `half_open`): circuit breaker state changes.
    pub const L2_BREAKER_CHANGES: &str = "pgmemo_l2_breaker_changes_total";
    /// counter, label `result` (`applied`, `failed`: recorded for retry, `retried`: a
    /// recorded bump applied later, with an epoch bump): bumps sent to Redis.
    pub const L2_BUMPS: &str = "pgmemo_l2_bumps_total";
    /// counter, label `result` (`ok`, `error`, `breaker_open`): reads of the shared counters.
    pub const L2_COUNTER_READS: &str = "pgmemo_l2_counter_reads_total";
    /// gauge: 1 while this instance holds the CDC lease (runs the change streams for all).
    pub const CDC_LEADER: &str = "pgmemo_cdc_leader";
    /// gauge: 1 while the bump subscription (`fast` consistency) is up.
    pub const L2_SUBSCRIBED: &str = "pgmemo_l2_subscribed";
    /// gauge: 1 while the shared tier is usable (eviction policy checked and safe).
    pub const L2_USABLE: &str = "pgmemo_l2_usable";
    /// histogram (seconds): time from a cacheable Query's arrival to its hit being queued.
    pub const CACHE_HIT_SECONDS: &str = "pgmemo_cache_hit_seconds";
    /// histogram (seconds): time from forwarding a missed read to its ReadyForQuery.
    pub const UPSTREAM_QUERY_SECONDS: &str = "pgmemo_upstream_query_seconds";
    /// counter, label `result` (`ok`, `error`): session settings probes on the upstream.
    pub const SESSION_PROBES: &str = "pgmemo_session_probes_total";
    /// counter: sessions moved to the worker pinned to their client's CPU.
    pub const SESSION_MIGRATIONS: &str = "pgmemo_session_migrations_total";
    /// counter, label `kind` (`plan`, `catalog_error`): statement plans computed (memo misses).
    pub const PLANS: &str = "pgmemo_statement_plans_total";
    /// counter, label `kind` (`eager`: a named statement's Parse, sent right after the hit;
    /// `lazy`: the unnamed statement's, sent before the first forwarded message naming it).
    pub const STATEMENT_REPLAYS: &str = "pgmemo_statement_replays_total";
    /// counter, labels `scope` (`all`, `table`) and `result` (`ok`, `error`): manual
    /// invalidations (`POST /invalidate`, SIGUSR1).
    pub const ADMIN_INVALIDATIONS: &str = "pgmemo_admin_invalidations_total";
    /// counter: admin requests refused (401) for a missing or wrong bearer token.
    pub const ADMIN_UNAUTHORIZED: &str = "pgmemo_admin_unauthorized_total";
}
