//! Runs the three services as the README shows, on each broker, against the
//! real PostgreSQL, RabbitMQ and NATS: what they print is what they did.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ORDERS: u32 = 12;
const PATIENCE: Duration = Duration::from_secs(120);

/// A running service whose stdout lines arrive on a channel.
struct Service {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Service {
    fn start(name: &'static str, binary: &str, args: &[String]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text`.
    fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "{} never printed {text:?}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for it to exit with success, and returns all it printed.
    fn finish(mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not finish; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.seen.extend(self.lines.iter());
        assert!(
            status.success(),
            "{} failed ({status}); it printed:\n{}",
            self.name,
            self.seen.join("\n")
        );
        self.seen
    }
}

fn run(broker: &str) {
    let unique = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            ^ u128::from(std::process::id())
    );
    let prefix = format!("ex{broker}{}", &unique[unique.len() - 8..]);
    let schema = format!("herald_test_example_{prefix}");
    let common = vec![
        "--broker".to_owned(),
        broker.to_owned(),
        "--prefix".to_owned(),
        prefix.clone(),
        "--schema".to_owned(),
        schema.clone(),
    ];
    let with = |extra: &[&str]| {
        let mut args = common.clone();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let expect = ORDERS.to_string();
    let mut notifications = Service::start(
        "notifications",
        env!("CARGO_BIN_EXE_notifications"),
        &with(&["--expect", &expect]),
    );
    let mut analytics = Service::start(
        "analytics",
        env!("CARGO_BIN_EXE_analytics"),
        &with(&["--expect", &expect]),
    );
    // The consumer groups exist before the first event reaches the broker.
    notifications.wait_for("ready");
    analytics.wait_for("ready");
    let orders = Service::start(
        "orders",
        env!("CARGO_BIN_EXE_orders"),
        &with(&["--orders", &expect]),
    );

    let placed = orders.finish();
    assert_eq!(
        placed
            .iter()
            .filter(|l| l.starts_with("placed order"))
            .count(),
        ORDERS as usize
    );
    let emailed = notifications.finish();
    let free: Vec<u32> = (1..=ORDERS).filter(|n| n % 3 == 0).collect();
    for n in 1..=ORDERS {
        let line = format!("emailed the customer of order {n} ");
        let times = emailed.iter().filter(|l| l.starts_with(&line)).count();
        if free.contains(&n) {
            assert_eq!(times, 0, "order {n} is free: no email\n{emailed:?}");
            assert!(
                emailed
                    .iter()
                    .any(|l| l.starts_with(&format!("dead letter: order {n} after 1 attempt"))),
                "order {n} is in the dead letters\n{emailed:?}"
            );
        } else {
            assert_eq!(times, 1, "order {n} emailed once\n{emailed:?}");
        }
    }
    // Every fourth order met a busy mail server first: its email went out on
    // the second attempt.
    assert!(
        emailed
            .iter()
            .any(|l| l.starts_with("emailed the customer of order 4 (attempt 2)")),
        "{emailed:?}"
    );
    let counted = analytics.finish();
    let revenue: u64 = (1..=ORDERS)
        .filter(|n| n % 3 != 0)
        .map(|n| u64::from(n) * 1_000)
        .sum();
    assert!(
        counted.contains(&format!("revenue: {revenue} cents over {ORDERS} orders")),
        "{counted:?}"
    );
}

#[test]
fn the_services_talk_over_rabbitmq() {
    run("amqp");
}

#[test]
fn the_services_talk_over_nats() {
    run("nats");
}

#[test]
fn the_services_talk_over_kafka() {
    run("kafka");
}
