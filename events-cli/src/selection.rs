//! Which dead letters a replay or purge applies to, for the command line (`--id`, `--type`,
//! `--reason`, `--all`) and the web admin (the same names in a query or form).

use clap::Args;
use events::{DeadLetterEntry, DeadLetters};
use redis::aio::ConnectionLike;
use serde::Deserialize;

/// Dead letters chosen by id, by type and reason (both when both are given), or all.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[group(required = true, multiple = false)]
pub(crate) struct Selection {
    /// The dead letter with this id.
    #[arg(long)]
    #[serde(default)]
    pub(crate) id: Option<String>,
    /// Dead letters of this event type.
    #[arg(long = "type", value_name = "TYPE")]
    #[serde(default, rename = "type")]
    pub(crate) event_type: Option<String>,
    /// Dead letters whose reason contains this text.
    #[arg(long)]
    #[serde(default)]
    pub(crate) reason: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    #[serde(default, deserialize_with = "flag")]
    pub(crate) all: bool,
}

/// A form's or query's flag: `true`, `on` or `1` (a text even where a form's fields are read
/// through a flattened struct, which keeps every value a string).
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(matches!(text.as_str(), "true" | "on" | "1"))
}

/// `value` unless it is blank (a form's empty field).
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
}

impl Selection {
    /// Whether anything is chosen at all.
    pub(crate) fn is_empty(&self) -> bool {
        !self.all
            && given(&self.id).is_none()
            && given(&self.event_type).is_none()
            && given(&self.reason).is_none()
    }

    /// Whether `letter` is chosen.
    pub(crate) fn matches(&self, letter: &DeadLetterEntry) -> bool {
        if self.all {
            return true;
        }
        !self.is_empty()
            && given(&self.id).is_none_or(|id| letter.id == id)
            && given(&self.event_type)
                .is_none_or(|wanted| letter.event_type().as_deref() == Some(wanted))
            && given(&self.reason).is_none_or(|text| letter.reason.contains(text))
    }

    /// What is chosen, in words: "of type `a` whose reason contains `b`".
    pub(crate) fn describe(&self) -> String {
        if self.all {
            return "all".into();
        }
        let mut words = Vec::new();
        if let Some(id) = given(&self.id) {
            words.push(format!("with id {id}"));
        }
        if let Some(event_type) = given(&self.event_type) {
            words.push(format!("of type `{event_type}`"));
        }
        if let Some(reason) = given(&self.reason) {
            words.push(format!("whose reason contains `{reason}`"));
        }
        words.join(" ")
    }

    /// The chosen dead letters, oldest first; an id that is not there is an error.
    pub(crate) async fn select<C: ConnectionLike + Send>(
        &self,
        letters: &mut DeadLetters<C>,
    ) -> Result<Vec<DeadLetterEntry>, String> {
        if let Some(id) = given(&self.id) {
            let letter = letters.get(id).await.map_err(|error| error.to_string())?;
            let chosen = letter.filter(|letter| self.matches(letter));
            return chosen
                .map(|letter| vec![letter])
                .ok_or_else(|| format!("no dead letter {id}"));
        }
        let all = letters.all().await.map_err(|error| error.to_string())?;
        Ok(all
            .into_iter()
            .filter(|letter| self.matches(letter))
            .collect())
    }
}
