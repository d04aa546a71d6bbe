//! The event types a consumer reads under other names: TypeScript services publish
//! `<namespace>.<type>` (by default their service name as the namespace), so that one typed
//! handler serves an event whichever language published it.

use std::collections::HashMap;

use crate::{Envelope, Error, Result};

/// Renames and namespaces to strip, applied to every event before its handler is looked up.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeNames {
    /// Exact renames, `from` to `to`: they win over namespaces.
    renames: HashMap<String, String>,
    /// Namespaces to strip, each with its dot: `user-service.`.
    namespaces: Vec<String>,
}

impl TypeNames {
    /// Strips `namespace` and the dot after it from the types that start with them.
    pub(crate) fn strip_namespace(&mut self, namespace: &str) -> Result<()> {
        let namespace = namespace.strip_suffix('.').unwrap_or(namespace);
        if namespace.is_empty() {
            return Err(Error::Config(
                "strip_namespace needs a namespace, such as `user-service`".into(),
            ));
        }
        self.namespaces.push(format!("{namespace}."));
        Ok(())
    }

    /// Reads events of type `from` as type `to`.
    pub(crate) fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        crate::check_event_type(to).map_err(|reason| Error::InvalidEventType {
            event_type: to.to_owned(),
            reason,
        })?;
        if from.is_empty() {
            return Err(Error::Config(format!(
                "rename_type to `{to}` needs a type to rename"
            )));
        }
        self.renames.insert(from.to_owned(), to.to_owned());
        Ok(())
    }

    /// `envelope` with its type as this consumer knows it.
    pub(crate) fn apply(&self, mut envelope: Envelope) -> Envelope {
        if let Some(to) = self.renames.get(&envelope.event_type) {
            envelope.event_type.clone_from(to);
        } else if let Some(stripped) = self
            .namespaces
            .iter()
            .find_map(|namespace| envelope.event_type.strip_prefix(namespace.as_str()))
            .filter(|stripped| !stripped.is_empty())
        {
            envelope.event_type = stripped.to_owned();
        }
        envelope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(event_type: &str) -> Envelope {
        Envelope::new(event_type, 1, "o", "{}".into())
    }

    fn names() -> TypeNames {
        let mut names = TypeNames::default();
        names.strip_namespace("user-service").unwrap();
        names.strip_namespace("billing.").unwrap();
        names
            .rename("user-service.user.renamed", "user.updated")
            .unwrap();
        names
    }

    #[test]
    fn strips_namespaces_and_renames() {
        let names = names();
        for (from, to) in [
            ("user-service.user.created", "user.created"),
            ("billing.invoice.paid", "invoice.paid"),
            ("user-service.user.renamed", "user.updated"),
            ("user.created", "user.created"),
            ("user-servicex.user.created", "user-servicex.user.created"),
            ("user-service.", "user-service."),
        ] {
            assert_eq!(names.apply(typed(from)).event_type, to, "{from}");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let mut names = TypeNames::default();
        assert!(names.strip_namespace(".").is_err());
        assert!(names.rename("a.b", "not a type!").is_err());
        assert!(names.rename("", "a.b").is_err());
    }
}
