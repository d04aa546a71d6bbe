//! Connections that reconnect by themselves, tuned so that an outage surfaces as a retryable error
//! within about a second instead of holding callers through long reconnection backoffs: the
//! publisher, the batched publisher and the consumer all retry on their own terms.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Error, Result};

/// A connection to `url` that reconnects by itself and gives up on a reply after
/// `response_timeout`.
pub(crate) async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|source| Error::Connect { source })?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|source| Error::Connect { source })
}
