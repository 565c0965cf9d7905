//! The client side of the control protocol, used by the CLI and the CNI
//! plugin.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::protocol::{Request, Response};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the daemon is not running.
    #[error(
        "the podswitch daemon is not running (no answer on {path}): start it, or wait for it to come up"
    )]
    NotRunning {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
    /// The conversation broke down.
    #[error("talking to the podswitch daemon: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not what the protocol promises.
    #[error("unexpected answer from the podswitch daemon: {0}")]
    BadAnswer(String),
}

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
}

/// How long a call may take before the client gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// Connect to the daemon's socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|_| ClientError::NotRunning { path: path.into() })?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// Send `request`; its result, or why it failed.
    pub fn call(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        line.push(b'\n');
        self.reader.get_mut().write_all(&line)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::BadAnswer(
                "the daemon closed the connection".into(),
            ));
        }
        let response: Response =
            serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(ClientError::Refused(
                response
                    .error
                    .unwrap_or_else(|| "refused, no reason given".into()),
            ))
        }
    }

    /// The connection, for what the daemon streams after an answer (a
    /// capture's pcapng), with no time limit on reads.
    pub fn into_stream(self) -> Result<BufReader<UnixStream>, ClientError> {
        self.reader.get_ref().set_read_timeout(None)?;
        Ok(self.reader)
    }

    /// Send `request` and decode its result as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let value = self.call(request)?;
        serde_json::from_value(value).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A daemon stand-in at a fresh socket path that reads one request
    /// line per answer and sends the answers back in order.
    fn fake_daemon(name: &str, answers: &'static [&'static str]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("podswitch-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            for answer in answers {
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                serde_json::from_str::<Request>(&request).unwrap();
                reader.get_mut().write_all(answer.as_bytes()).unwrap();
            }
        });
        path
    }

    #[test]
    fn answers_become_results_or_errors() {
        let path = fake_daemon(
            "answers",
            &[
                "{\"ok\":true,\"result\":[1,2]}\n",
                "{\"ok\":false,\"error\":\"no such port\"}\n",
                "{\"ok\":true}\n",
                "not json\n",
            ],
        );
        let mut client = Client::connect(&path).unwrap();
        let numbers: Vec<u32> = client.call_as(&Request::Ports).unwrap();
        assert_eq!(numbers, [1, 2]);
        let refused = client.call(&Request::Peers).unwrap_err();
        assert!(matches!(&refused, ClientError::Refused(e) if e == "no such port"));
        assert_eq!(
            client.call(&Request::Info).unwrap(),
            serde_json::Value::Null
        );
        assert!(matches!(
            client.call(&Request::Stats),
            Err(ClientError::BadAnswer(_))
        ));
        // The daemon went away: said so, not a hang or a panic.
        assert!(matches!(
            client.call(&Request::Routes),
            Err(ClientError::BadAnswer(_) | ClientError::Io(_))
        ));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn no_daemon_says_it_is_not_running() {
        let path =
            std::env::temp_dir().join(format!("podswitch-control-{}-absent", std::process::id()));
        let err = Client::connect(&path).err().unwrap();
        assert!(matches!(err, ClientError::NotRunning { .. }));
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
