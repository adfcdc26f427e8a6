//! The shared tier's background work: the writer loop that stores entries, the retry of
//! bumps Redis did not take, the breaker's trial, and the subscription that keeps the fast
//! mode's mirror of the counters live.

use super::*;

impl SharedTier {
    /// Retries what is pending: the tags, and the epoch (other instances may have cached,
    /// meanwhile, results the lost bump should have made unreachable, under keys that a
    /// tag bump alone also changes; the epoch is for the bumps too many to name and for
    /// results computed across the gap in any combination).
    pub(super) async fn retry_pending(&self) {
        let (tags, _) = {
            let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if p.tags.is_empty() && !p.epoch {
                return;
            }
            let taken = std::mem::take(&mut *p);
            (taken.tags.into_iter().collect::<Vec<_>>(), taken.epoch)
        };
        if self.try_bump(&tags, true).await {
            self.metrics.retried.increment(1);
            let p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if p.tags.is_empty() && !p.epoch {
                self.has_pending.store(false, Ordering::Release);
            }
            info!(tags = tags.len(), "redis: recorded bumps applied");
        } else {
            self.record(&tags, true);
        }
    }

    /// Background work until `stop`: the policy check, retries, the subscription (`fast`)
    /// and the store's writer.
    pub async fn run(self: Arc<Self>, writer: L2Writer<RedisConn>, stop: CancellationToken) {
        self.tasks.spawn("l2-writer", writer.run(stop.clone()));
        if self.mirror.is_some() {
            self.tasks
                .spawn("l2-subscribe", Arc::clone(&self).subscribe(stop.clone()));
        }
        let mut last_check: Option<Instant> = None;
        let mut refused = false;
        loop {
            let due = last_check.is_none_or(|t| t.elapsed() >= POLICY_RECHECK)
                || !self.usable.load(Ordering::Acquire);
            if due {
                let mut conn = self.conn.clone();
                match self.versions.check_policy(&mut conn).await {
                    Ok(()) => {
                        if !self.usable.swap(true, Ordering::AcqRel) {
                            info!("redis: shared cache in use");
                        }
                        metrics::gauge!(names::L2_USABLE).set(1.0);
                        refused = false;
                        last_check = Some(Instant::now());
                    }
                    Err(VersionsError::EvictionPolicy(p)) => {
                        self.usable.store(false, Ordering::Release);
                        metrics::gauge!(names::L2_USABLE).set(0.0);
                        if !refused {
                            error!(policy = %p, "{}", VersionsError::EvictionPolicy(p.clone()));
                            refused = true;
                        }
                        last_check = Some(Instant::now());
                    }
                    Err(VersionsError::Redis(e))
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                    {
                        // CONFIG is disabled (managed Redis): the policy cannot be checked.
                        if !self.usable.swap(true, Ordering::AcqRel) {
                            warn!(error = %e, "redis: cannot read maxmemory-policy; make sure it is noeviction or volatile-*");
                        }
                        metrics::gauge!(names::L2_USABLE).set(1.0);
                        last_check = Some(Instant::now());
                    }
                    Err(e) => tracing::debug!(error = %e, "redis: policy check failed"),
                }
            }
            if self.has_pending.load(Ordering::Acquire) {
                self.retry_pending().await;
            }
            self.trial().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MAINTENANCE_TICK) => {}
            }
        }
    }

    /// An open breaker due a trial gets one here, so it closes once Redis is back even when
    /// no lookup asks Redis meanwhile (`fast` serving from its mirror).
    pub(super) async fn trial(&self) {
        let breaker = self.store.breaker();
        if breaker.state() == crate::redis_link::breaker::BreakerState::Closed
            || !breaker.allow(Instant::now())
        {
            return;
        }
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.settings.store.timeout, ping).await {
            Ok(Ok(_)) => breaker.success(),
            _ => breaker.failure(Instant::now()),
        }
    }

    /// `fast`: follows the bump announcements into the mirror; every (re)subscription
    /// empties it, every loss marks it not live.
    pub(super) async fn subscribe(self: Arc<Self>, stop: CancellationToken) {
        let Some(mirror) = self.mirror.as_ref() else {
            return;
        };
        let channel = self.versions.channel();
        let timeout = self.settings.store.timeout.max(Duration::from_millis(200));
        let mut seed = 0usize;
        let mut was_live = false;
        loop {
            let url = self
                .settings
                .seeds
                .get(seed % self.settings.seeds.len().max(1))
                .cloned()
                .unwrap_or_default();
            seed = seed.wrapping_add(1);
            let session = async {
                let client = redis::Client::open(url.as_str())?;
                let mut pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| io_timeout())??;
                tokio::time::timeout(timeout, pubsub.subscribe(&channel))
                    .await
                    .map_err(|_| io_timeout())??;
                mirror.set_live(true);
                metrics::gauge!(names::L2_SUBSCRIBED).set(1.0);
                info!("redis: following bump announcements");
                was_live = true;
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else { return Ok::<(), redis::RedisError>(()) };
                            match msg.get_payload::<String>().ok().as_deref().and_then(parse_bump_message) {
                                Some(b) => mirror.apply(&b, true),
                                None => mirror.reset(),
                            }
                        }
                        _ = ping.tick() => {
                            tokio::time::timeout(timeout, sink.ping::<redis::Value>())
                                .await
                                .map_err(|_| io_timeout())??;
                        }
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = session => {
                    mirror.set_live(false);
                    metrics::gauge!(names::L2_SUBSCRIBED).set(0.0);
                    let why = r.err().map_or_else(|| "closed".to_string(), |e| e.to_string());
                    if std::mem::take(&mut was_live) {
                        warn!(error = %why, "redis: bump subscription lost; L1 only (TTL-bounded) until it is back");
                    } else {
                        tracing::debug!(error = %why, "redis: bump subscription failed");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
            }
        }
    }
}
