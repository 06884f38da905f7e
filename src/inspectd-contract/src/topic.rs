//! Topic names: `{prefix}/{device}/{leaf}`, built by the edge and taken apart by receivers.

/// What a topic carries: the level(s) after `{prefix}/{device}/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf<'a> {
    Status,
    Verdict,
    /// `evidence/{seq}`: the JPEG of verdict `seq`.
    Evidence(u64),
    Alert,
    Stats,
    /// `cmd/{name}`: a command sent to the device (the name as it arrived, any UTF-8).
    Cmd(&'a str),
    CmdResult,
}

impl Leaf<'_> {
    /// The leaf's levels as they appear in the topic.
    pub fn levels(&self) -> String {
        match self {
            Leaf::Status => "status".into(),
            Leaf::Verdict => "verdict".into(),
            Leaf::Evidence(seq) => format!("evidence/{seq}"),
            Leaf::Alert => "alert".into(),
            Leaf::Stats => "stats".into(),
            Leaf::Cmd(name) => format!("cmd/{name}"),
            Leaf::CmdResult => "cmd_result".into(),
        }
    }
}

/// `{prefix}/{device}/{leaf}`.
pub fn topic(prefix: &str, device: &str, leaf: Leaf) -> String {
    format!("{prefix}/{device}/{}", leaf.levels())
}

/// The filter a device subscribes to for its commands: `{prefix}/{device}/cmd/+`.
pub fn cmd_filter(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/cmd/+")
}

/// Why a topic is not one of the contract's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("{0:?} is outside {1}/")]
    OutsidePrefix(String, String),
    #[error("{0:?} has no message kind")]
    NoKind(String),
    #[error("{0:?}: bad device id")]
    BadDevice(String),
    #[error("{0:?}: bad sequence number")]
    BadSequence(String),
    #[error("{0:?}: unknown message kind")]
    UnknownKind(String),
}

/// Takes `topic` apart: its device and leaf. The device level is any non-empty level; receivers
/// bound its length themselves.
pub fn parse<'a>(prefix: &str, topic: &'a str) -> Result<(&'a str, Leaf<'a>), TopicError> {
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| TopicError::OutsidePrefix(topic.into(), prefix.into()))?;
    let (device, leaf) = rest
        .split_once('/')
        .ok_or_else(|| TopicError::NoKind(topic.into()))?;
    if device.is_empty() {
        return Err(TopicError::BadDevice(topic.into()));
    }
    let leaf = match leaf {
        "status" => Leaf::Status,
        "verdict" => Leaf::Verdict,
        "alert" => Leaf::Alert,
        "stats" => Leaf::Stats,
        "cmd_result" => Leaf::CmdResult,
        _ if leaf.starts_with("evidence/") => Leaf::Evidence(
            leaf["evidence/".len()..]
                .parse::<u64>()
                .ok()
                .filter(|&s| s <= i64::MAX as u64)
                .ok_or_else(|| TopicError::BadSequence(topic.into()))?,
        ),
        _ if leaf.starts_with("cmd/") => Leaf::Cmd(&leaf["cmd/".len()..]),
        _ => return Err(TopicError::UnknownKind(topic.into())),
    };
    Ok((device, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_parses_back_to_itself() {
        for leaf in [
            Leaf::Status,
            Leaf::Verdict,
            Leaf::Evidence(42),
            Leaf::Alert,
            Leaf::Stats,
            Leaf::Cmd("trigger"),
            Leaf::CmdResult,
        ] {
            let t = topic("inspect", "line-3", leaf);
            assert_eq!(parse("inspect", &t), Ok(("line-3", leaf)), "{t}");
        }
        assert_eq!(topic("p", "d", Leaf::Evidence(7)), "p/d/evidence/7");
        assert_eq!(cmd_filter("p", "d"), "p/d/cmd/+");
    }

    #[test]
    fn topics_outside_the_contract_are_refused_with_their_reason() {
        let e = |t: &str| parse("inspect", t).unwrap_err();
        assert!(matches!(
            e("other/a/verdict"),
            TopicError::OutsidePrefix(..)
        ));
        assert!(matches!(
            e("inspectx/a/verdict"),
            TopicError::OutsidePrefix(..)
        ));
        assert!(matches!(e("inspect/a"), TopicError::NoKind(_)));
        assert!(matches!(e("inspect//verdict"), TopicError::BadDevice(_)));
        assert!(matches!(
            e("inspect/a/evidence/x"),
            TopicError::BadSequence(_)
        ));
        assert!(matches!(
            e("inspect/a/evidence/18446744073709551615"),
            TopicError::BadSequence(_)
        ));
        assert!(matches!(
            e("inspect/a/firmware"),
            TopicError::UnknownKind(_)
        ));
    }
}
