//! Validation reports: every failing field of a value, with its path.

use std::fmt;

/// One field that failed validation: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field from the validated value, such as `email` or `items[2].sku`.
    pub path: String,
    /// What is wrong with it, such as `must be a valid email address`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every field of a value that failed validation, in declaration order.
///
/// Returned by [`Validate::validate`]; it is an [`std::error::Error`] whose message lists each
/// failing field with its path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationReport {
    errors: Vec<FieldError>,
}

impl ValidationReport {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the field at `path` failed with `message`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether no field failed.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// How many fields failed.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// The failing fields, in the order they were found.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// The failure recorded for `path`, if any.
    pub fn get(&self, path: &str) -> Option<&FieldError> {
        self.errors.iter().find(|error| error.path == path)
    }

    /// `Ok(())` when the report is empty, the report itself otherwise.
    pub fn into_result(self) -> Result<(), Self> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => f.write_str("no invalid fields"),
            [only] => write!(f, "invalid field {only}"),
            all => {
                write!(f, "{} invalid fields: ", all.len())?;
                for (i, error) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{error}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ValidationReport {}

impl IntoIterator for ValidationReport {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

/// A value that can check its own fields: derived with `#[derive(Validate)]` for structs nested in
/// events, and implied by `#[derive(Event)]`.
pub trait Validate {
    /// Checks every field and reports all that fail, not only the first.
    fn validate(&self) -> Result<(), ValidationReport> {
        let mut report = ValidationReport::new();
        self.validate_into("", &mut report);
        report.into_result()
    }

    /// Appends every failing field to `report`, each path prefixed with `path` (empty at the top).
    fn validate_into(&self, path: &str, report: &mut ValidationReport);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_every_field() {
        let mut report = ValidationReport::new();
        report.push("email", "must be a valid email address");
        report.push("items[2].sku", "must not be empty");
        assert_eq!(
            report.to_string(),
            "2 invalid fields: email: must be a valid email address; items[2].sku: must not be empty"
        );
        assert_eq!(
            report.get("items[2].sku").unwrap().message,
            "must not be empty"
        );
    }

    #[test]
    fn display_of_one_field() {
        let mut report = ValidationReport::new();
        report.push("name", "must not be empty");
        assert_eq!(report.to_string(), "invalid field name: must not be empty");
    }

    #[test]
    fn empty_report_is_ok() {
        assert_eq!(ValidationReport::new().into_result(), Ok(()));
    }
}
