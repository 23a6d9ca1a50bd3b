//! `mosquitto_sub` as a long-running subscriber: an MQTT client written by other people,
//! whose SUBACK and messages a test reads line by line from its output.

use crate::mqtt::WAIT;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// What each received message is printed as (`-F`): a marker, the topic, the payload.
const MESSAGE_FORMAT: &str = "MSG %t %p";

/// A running `mosquitto_sub`, subscribed; killed when dropped.
pub struct MosquittoSub {
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    /// The granted QoS of each filter, as the SUBACK said (`"1, 1"`).
    pub granted: String,
    _child: Child,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -d` with `args` (host, port, version, credentials and `-t`
    /// filters) and waits until the broker has answered its SUBSCRIBE.
    ///
    /// Its output goes through `stdbuf -oL`: piped, mosquitto_sub would hold its debug
    /// lines (the SUBACK among them) in a buffer until it exits.
    pub async fn start(args: &[&str]) -> MosquittoSub {
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-F", MESSAGE_FORMAT])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub is installed (the test command installs mosquitto-clients)");
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            forward_lines(stdout, tx.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            forward_lines(stderr, tx);
        }
        let mut sub = MosquittoSub {
            lines,
            seen: Vec::new(),
            granted: String::new(),
            _child: child,
        };
        // "Subscribed (mid: 1): 1, 1" follows the SUBACK.
        loop {
            match sub.next_line(WAIT).await {
                Some(line) if line.starts_with("Subscribed (mid: ") => {
                    let granted = line.split_once("): ").map(|(_, codes)| codes);
                    sub.granted = granted.unwrap_or_default().to_owned();
                    return sub;
                }
                Some(_) => continue,
                None => panic!("mosquitto_sub never subscribed: {:?}", sub.seen),
            }
        }
    }

    async fn next_line(&mut self, wait: Duration) -> Option<String> {
        let line = tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// The next message as `(topic, payload)` within `wait`; `None` when none came or the
    /// process ended.
    pub async fn next_message(&mut self, wait: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = self.next_line(left).await?;
            if let Some((topic, payload)) = line
                .strip_prefix("MSG ")
                .and_then(|rest| rest.split_once(' '))
            {
                return Some((topic.to_owned(), payload.to_owned()));
            }
        }
    }

    /// Everything mosquitto_sub printed so far, for assertion messages.
    pub fn output(&self) -> String {
        self.seen.join("\n")
    }
}

fn forward_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
}
