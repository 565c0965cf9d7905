//! The client side of the control protocol, used by the CLI and the CNI
//! plugin.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::protocol::{Request, Response};

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

    /// Send `request` and decode its result as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let value = self.call(request)?;
        serde_json::from_value(value).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}
