//! The names one instance uses in NATS: subjects, the object store bucket.

use crate::{Error, JetStream, Result};

/// The names one instance uses in NATS.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub(crate) url: String,
    pub(crate) stream: String,
    pub(crate) replicas: usize,
    pub(crate) instance: String,
    pub(crate) prefix: String,
}

impl Names {
    pub(crate) fn new(r: &JetStream, instance: &str) -> Names {
        Names {
            url: r.url.clone(),
            stream: r.stream.clone(),
            replicas: r.replicas,
            instance: instance.to_owned(),
            prefix: r.subject_prefix.clone(),
        }
    }
    pub(crate) fn wal_subject(&self) -> String {
        format!("{}.{}.wal", self.prefix, self.instance)
    }
    pub(crate) fn owner_subject(&self) -> String {
        format!("{}.{}.owner", self.prefix, self.instance)
    }
    /// Each owner records its floors and checkpoints on subjects of its own
    /// epoch, so a fenced owner's "keep only the newest" purge never
    /// removes a newer owner's (epoch 0: from before owners were fenced).
    pub(crate) fn trim_subject(&self, epoch: u64) -> String {
        match epoch {
            0 => format!("{}.{}.trim", self.prefix, self.instance),
            e => format!("{}.{}.trim.{e}", self.prefix, self.instance),
        }
    }
    pub(crate) fn ckpt_subject(&self, epoch: u64) -> String {
        match epoch {
            0 => format!("{}.{}.ckpt", self.prefix, self.instance),
            e => format!("{}.{}.ckpt.{e}", self.prefix, self.instance),
        }
    }
    pub(crate) fn ckpt_object(&self, epoch: u64) -> String {
        match epoch {
            0 => self.instance.clone(),
            e => format!("{}.{e}", self.instance),
        }
    }
    pub(crate) fn bucket(&self) -> String {
        format!("{}-checkpoints", self.stream)
    }
    pub(crate) fn error(&self, reason: impl std::fmt::Display) -> Error {
        Error::Replication {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The servers of a `nats://host:port[,nats://host:port…]` list.
pub(crate) fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    url.split(',')
        .map(|u| {
            u.trim().parse::<async_nats::ServerAddr>().map_err(|e| {
                Error::Config(format!("replicate: {u:?} is not a NATS server URL: {e}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_lists_are_checked() {
        assert_eq!(servers("nats://a:4222, nats://b:4223").unwrap().len(), 2);
        assert!(matches!(
            servers("nats://a:notaport"),
            Err(Error::Config(_))
        ));
    }
}
