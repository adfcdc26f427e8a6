//! Sessions follow their client's CPU (`server.pin_workers`, on by default): with one worker
//! pinned per CPU, a session whose client keeps sending from another worker's CPU moves to
//! that worker at an idle point. These tests pin the client thread, so its sessions must
//! move, and check that nothing relayed is lost, duplicated or reordered across a move:
//! query results, large streamed results, committed writes, and notifications that arrive
//! while the session is idle.

mod common;

use std::time::Duration;

use common::{SUPERUSER, Stack, connect_with_messages};
use tokio_postgres::SimpleQueryMessage;

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity");
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn pin_to(cpu: usize) {
    // SAFETY: as above; `cpu` comes from the allowed set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "sched_setaffinity");
}

/// Runs `work` to completion on a new thread pinned to `cpu`, in a runtime of its own.
fn on_pinned_thread<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    cpu: usize,
    work: impl FnOnce() -> F + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        pin_to(cpu);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work())
    })
    .join()
    .expect("client thread")
}

fn values(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

fn metric(stack: &Stack, name: &str) -> f64 {
    stack
        .proxy
        .admin_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn sessions_move_to_their_clients_cpu_and_relay_everything() {
    // On one CPU there is one worker and nowhere to move: the workload still runs and must
    // relay everything, and the count of moves must stay zero.
    let cpus = allowed_cpus();
    let stack = Stack::start();
    let client_cpu = *cpus.last().unwrap();
    let addr = stack.proxy.addr();
    let pg_addr = stack.pg.addr();
    // The client runs on one CPU: every session on another worker has a reason to move.
    let inserted = on_pinned_thread(client_cpu, move || async move {
        {
            let direct = common::connect(pg_addr, SUPERUSER, "", common::stack::APP_DB).await;
            direct
                .batch_execute("CREATE TABLE moved(i int PRIMARY KEY)")
                .await
                .unwrap();
            // Consecutive connections go to different workers (round robin), so at least
            // one of these starts away from the client's CPU.
            let (a, mut a_messages) =
                connect_with_messages(addr, SUPERUSER, "", common::stack::APP_DB).await;
            let (b, _b_messages) =
                connect_with_messages(addr, SUPERUSER, "", common::stack::APP_DB).await;
            a.batch_execute("LISTEN moved").await.unwrap();
            let mut inserted = 0;
            for i in 0..1500 {
                for c in [&a, &b] {
                    let got = values(&c.simple_query(&format!("SELECT {i}")).await.unwrap());
                    assert_eq!(got, [i.to_string()], "query {i}");
                }
                if i % 100 == 0 {
                    // Larger than every buffer on the way: streamed through.
                    let big = a
                        .simple_query("SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
                        .await
                        .unwrap();
                    assert_eq!(values(&big).len(), 2000);
                    b.batch_execute(&format!("BEGIN; INSERT INTO moved VALUES ({i}); COMMIT"))
                        .await
                        .unwrap();
                    inserted += 1;
                }
                if i % 250 == 0 {
                    // Sent while A is idle: it waits in A's socket, wherever A runs.
                    direct
                        .batch_execute(&format!("NOTIFY moved, '{i}'"))
                        .await
                        .unwrap();
                    let n = a_messages
                        .expect_notification(Duration::from_secs(10))
                        .await;
                    assert_eq!(n.payload(), i.to_string());
                }
            }
            let count = values(&a.simple_query("SELECT count(*) FROM moved").await.unwrap());
            assert_eq!(count, [inserted.to_string()]);
            inserted
        }
    });
    assert_eq!(inserted, 15);
    let moved = metric(&stack, "pgmemo_session_migrations_total");
    if cpus.len() >= 2 {
        assert!(moved >= 1.0, "no session moved to its client's CPU");
    } else {
        assert_eq!(moved, 0.0, "one CPU, one worker: a session moved");
    }
}

#[test]
fn unpinned_workers_never_move_sessions() {
    let cpus = allowed_cpus();
    let stack = Stack::start_with(Default::default(), |args| {
        args.config("[server]\npin_workers = false\n")
    });
    let client_cpu = *cpus.last().unwrap();
    let addr = stack.proxy.addr();
    on_pinned_thread(client_cpu, move || async move {
        {
            let (a, _am) = connect_with_messages(addr, SUPERUSER, "", "postgres").await;
            let (b, _bm) = connect_with_messages(addr, SUPERUSER, "", "postgres").await;
            for i in 0..600 {
                for c in [&a, &b] {
                    let got = values(&c.simple_query(&format!("SELECT {i}")).await.unwrap());
                    assert_eq!(got, [i.to_string()]);
                }
            }
        }
    });
    assert_eq!(metric(&stack, "pgmemo_session_migrations_total"), 0.0);
}
