//! What `#[derive(Event)]` and `#[derive(Validate)]` generate, checked at run time.

mod full_event;

use events::{Event, FieldError, Validate, ValidationReport};
use serde::{Deserialize, Serialize};

/// Every validator on a flat event.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "user.created", version = 3)]
struct UserCreated {
    #[event(uuid, idempotency_key)]
    user_id: String,
    #[event(email)]
    email: String,
    #[event(url)]
    homepage: String,
    #[event(length(min = 2, max = 5))]
    nickname: String,
    #[event(range(min = 18, max = 130))]
    age: u8,
    #[event(non_empty)]
    roles: Vec<String>,
    #[event(pattern = "^[A-Z]{2}$")]
    country: String,
    #[event(custom = not_reserved)]
    handle: String,
    /// No validator: never reported.
    bio: String,
}

fn not_reserved(handle: &str) -> Result<(), String> {
    if handle == "admin" {
        Err(format!("`{handle}` is reserved"))
    } else {
        Ok(())
    }
}

fn user() -> UserCreated {
    UserCreated {
        user_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
        email: "ada@example.com".into(),
        homepage: "https://example.com/ada".into(),
        nickname: "ada".into(),
        age: 36,
        roles: vec!["admin".into()],
        country: "GB".into(),
        handle: "ada".into(),
        bio: String::new(),
    }
}

/// The single failure of `value`, as `(path, message)`.
fn only_error(value: &impl Validate) -> (String, String) {
    let report = value.validate().expect_err("should fail");
    assert_eq!(report.len(), 1, "{report}");
    let FieldError { path, message } = report.errors()[0].clone();
    (path, message)
}

fn pair(path: &str, message: &str) -> (String, String) {
    (path.to_owned(), message.to_owned())
}

#[test]
fn constants_come_from_the_attribute() {
    assert_eq!(UserCreated::NAME, "user.created");
    assert_eq!(UserCreated::VERSION, 3);
    assert_eq!(Unmarked::NAME, "audit_log.entry-added.v2");
    assert_eq!(Unmarked::VERSION, 1, "the version defaults to 1");
}

#[test]
fn a_valid_event_passes() {
    assert_eq!(user().validate(), Ok(()));
}

/// Breaks one field of a valid event and checks that only it is reported, with `message`.
fn assert_fails(break_it: fn(&mut UserCreated), path: &str, message: &str) {
    let mut event = user();
    break_it(&mut event);
    assert_eq!(only_error(&event), pair(path, message));
}

#[test]
fn each_validator_reports_its_field_and_message() {
    assert_fails(
        |u| u.user_id = "67e55044-10b1".into(),
        "user_id",
        "must be a valid UUID",
    );
    assert_fails(
        |u| u.email = "ada.example.com".into(),
        "email",
        "must be a valid email address",
    );
    assert_fails(
        |u| u.homepage = "example.com".into(),
        "homepage",
        "must be a valid URL",
    );
    assert_fails(
        |u| u.nickname = "a".into(),
        "nickname",
        "length must be between 2 and 5 (it is 1)",
    );
    assert_fails(
        |u| u.nickname = "ada lovelace".into(),
        "nickname",
        "length must be between 2 and 5 (it is 12)",
    );
    assert_fails(|u| u.age = 7, "age", "must be between 18 and 130 (it is 7)");
    assert_fails(
        |u| u.age = 200,
        "age",
        "must be between 18 and 130 (it is 200)",
    );
    assert_fails(|u| u.roles.clear(), "roles", "must not be empty");
    assert_fails(
        |u| u.country = "gb".into(),
        "country",
        "must match the pattern ^[A-Z]{2}$",
    );
    assert_fails(
        |u| u.handle = "admin".into(),
        "handle",
        "`admin` is reserved",
    );
}

#[test]
fn lengths_count_characters_and_bounds_are_inclusive() {
    let mut event = user();
    event.nickname = "héllo".into();
    event.age = 130;
    assert_eq!(event.validate(), Ok(()));
    event.nickname = "hé".into();
    event.age = 18;
    assert_eq!(event.validate(), Ok(()));
}

#[test]
fn every_failing_field_is_reported_in_declaration_order() {
    let event = UserCreated {
        user_id: "nope".into(),
        email: "nope".into(),
        homepage: "nope".into(),
        nickname: String::new(),
        age: 0,
        roles: Vec::new(),
        country: "nope".into(),
        handle: "admin".into(),
        bio: String::new(),
    };
    let report = event.validate().unwrap_err();
    let paths: Vec<&str> = report.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "user_id", "email", "homepage", "nickname", "age", "roles", "country", "handle"
        ]
    );
}

#[test]
fn validators_in_several_attributes_all_apply_in_order() {
    #[derive(Validate)]
    struct Sku {
        #[event(non_empty)]
        #[event(length(max = 4), pattern = "^[A-Z]+$")]
        code: String,
    }
    let report = Sku { code: " ".into() }.validate().unwrap_err();
    let messages: Vec<&str> = report.errors().iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        ["must not be empty", "must match the pattern ^[A-Z]+$"]
    );
    let (path, message) = only_error(&Sku {
        code: "ABCDE".into(),
    });
    assert_eq!(
        (path.as_str(), message.as_str()),
        ("code", "length must be at most 4 (it is 5)")
    );
}

#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
struct Address {
    #[event(pattern = "^[0-9]{5}$")]
    zip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
struct Customer {
    #[event(email)]
    email: String,
    #[event(nested)]
    address: Address,
}

#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
struct Item {
    #[event(non_empty)]
    sku: String,
    #[event(range(min = 1))]
    quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.placed", version = 2)]
struct OrderPlaced {
    #[event(idempotency_key)]
    order_id: u64,
    #[event(nested)]
    customer: Customer,
    #[event(nested, length(max = 3))]
    items: Vec<Item>,
    #[event(nested)]
    billing: Option<Customer>,
    #[event(nested, non_empty)]
    gifts: Option<Vec<Item>>,
}

fn customer() -> Customer {
    Customer {
        email: "ada@example.com".into(),
        address: Address {
            zip: "75001".into(),
        },
    }
}

fn item(sku: &str) -> Item {
    Item {
        sku: sku.into(),
        quantity: 1,
    }
}

fn order() -> OrderPlaced {
    OrderPlaced {
        order_id: 7,
        customer: customer(),
        items: vec![item("a"), item("b"), item("c")],
        billing: None,
        gifts: None,
    }
}

#[test]
fn nested_fields_report_their_full_path() {
    assert_eq!(order().validate(), Ok(()));

    let mut event = order();
    event.customer.email = "nope".into();
    event.customer.address.zip = "7500".into();
    let report = event.validate().unwrap_err();
    assert_eq!(
        report.errors(),
        [
            FieldError {
                path: "customer.email".into(),
                message: "must be a valid email address".into(),
            },
            FieldError {
                path: "customer.address.zip".into(),
                message: "must match the pattern ^[0-9]{5}$".into(),
            },
        ]
    );
}

#[test]
fn vec_elements_report_their_index() {
    let mut event = order();
    event.items[2].sku = String::new();
    event.items[0].quantity = 0;
    let report = event.validate().unwrap_err();
    assert_eq!(
        report.to_string(),
        "2 invalid fields: items[0].quantity: must be at least 1 (it is 0); \
         items[2].sku: must not be empty"
    );
}

#[test]
fn length_on_a_vec_of_nested_checks_the_vec_itself() {
    let mut event = order();
    event.items.push(item("d"));
    assert_eq!(
        only_error(&event),
        pair("items", "length must be at most 3 (it is 4)")
    );
}

#[test]
fn optional_nested_values_are_checked_when_present() {
    let mut event = order();
    event.billing = Some(Customer {
        email: "nope".into(),
        ..customer()
    });
    assert_eq!(
        only_error(&event),
        pair("billing.email", "must be a valid email address")
    );

    event.billing = Some(customer());
    event.gifts = Some(vec![item("x"), item(" ")]);
    assert_eq!(
        only_error(&event),
        pair("gifts[1].sku", "must not be empty")
    );

    event.gifts = Some(Vec::new());
    assert_eq!(only_error(&event), pair("gifts", "must not be empty"));
}

#[test]
fn validate_into_prefixes_paths_with_the_parent() {
    let mut event = order();
    event.items[1].sku = String::new();
    let mut report = ValidationReport::new();
    event.validate_into("batch[4]", &mut report);
    assert_eq!(report.errors()[0].path, "batch[4].items[1].sku");
}

#[derive(Debug, Default, Serialize, Deserialize, Event)]
#[event(name = "profile.updated")]
struct ProfileUpdated {
    #[event(email, length(max = 20))]
    backup_email: Option<String>,
    #[event(range(min = 0, max = 1))]
    ratio: f64,
    #[event(range(min = -5, max = 5))]
    offset: i32,
    #[event(range(min = -0.5))]
    drift: Option<f32>,
    #[event(range(max = 10))]
    weight: Option<f64>,
}

#[test]
fn none_passes_and_some_is_validated() {
    assert_eq!(ProfileUpdated::default().validate(), Ok(()));
    let (path, message) = only_error(&ProfileUpdated {
        backup_email: Some("nope".into()),
        ..ProfileUpdated::default()
    });
    assert_eq!(
        (path.as_str(), message.as_str()),
        ("backup_email", "must be a valid email address")
    );
    let report = ProfileUpdated {
        backup_email: Some("a-very-long-name@example.com".into()),
        ..ProfileUpdated::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        report.errors()[0].message,
        "length must be at most 20 (it is 28)"
    );
}

#[test]
fn ranges_take_integer_literals_on_floats_and_negative_bounds() {
    let valid = ProfileUpdated {
        ratio: 1.0,
        offset: -5,
        drift: Some(-0.5),
        weight: Some(10.0),
        ..ProfileUpdated::default()
    };
    assert_eq!(valid.validate(), Ok(()));

    let report = ProfileUpdated {
        ratio: 1.5,
        offset: -6,
        drift: Some(-0.75),
        weight: Some(10.5),
        ..ProfileUpdated::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        report.to_string(),
        "4 invalid fields: ratio: must be between 0 and 1 (it is 1.5); \
         offset: must be between -5 and 5 (it is -6); drift: must be at least -0.5 (it is -0.75); \
         weight: must be at most 10 (it is 10.5)"
    );
}

#[test]
fn the_idempotency_key_is_built_from_the_marked_fields() {
    let first = order();
    let mut same_id = order();
    same_id.customer.email = "grace@example.com".into();
    let mut other_id = order();
    other_id.order_id = 8;
    assert!(first.idempotency_key().is_some());
    assert_eq!(first.idempotency_key(), same_id.idempotency_key());
    assert_ne!(first.idempotency_key(), other_id.idempotency_key());

    assert_eq!(
        user().idempotency_key(),
        Some("\"67e55044-10b1-426f-9247-bb680e5fe0c8\"\u{1f}".to_owned())
    );
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "transfer.requested")]
struct TransferRequested {
    #[event(idempotency_key)]
    from: String,
    #[event(non_empty, idempotency_key)]
    to: String,
    amount: u64,
}

fn transfer(from: &str, to: &str, amount: u64) -> TransferRequested {
    TransferRequested {
        from: from.into(),
        to: to.into(),
        amount,
    }
}

#[test]
fn the_idempotency_key_combines_fields_in_declaration_order() {
    let key = |t: TransferRequested| t.idempotency_key().unwrap();
    assert_eq!(key(transfer("a", "b", 1)), key(transfer("a", "b", 2)));
    assert_ne!(key(transfer("a", "b", 1)), key(transfer("b", "a", 1)));
    assert_ne!(key(transfer("ab", "c", 1)), key(transfer("a", "bc", 1)));
    assert_eq!(key(transfer("a", "b", 1)), "\"a\"\u{1f}\"b\"\u{1f}");
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "audit_log.entry-added.v2")]
struct Unmarked {
    note: String,
}

#[test]
fn without_marked_fields_there_is_no_idempotency_key() {
    let event = Unmarked { note: "x".into() };
    assert_eq!(event.idempotency_key(), None);
    assert_eq!(event.validate(), Ok(()));
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "account.debited")]
struct AccountDebited {
    #[event(partition_key)]
    account: String,
    #[event(idempotency_key)]
    debit_id: u64,
    #[event(non_empty, partition_key)]
    currency: String,
    amount: u64,
}

fn debit(account: &str, debit_id: u64, currency: &str, amount: u64) -> AccountDebited {
    AccountDebited {
        account: account.into(),
        debit_id,
        currency: currency.into(),
        amount,
    }
}

#[test]
fn the_partition_key_is_built_from_the_marked_fields_in_declaration_order() {
    let key = |d: AccountDebited| d.partition_key().unwrap();
    assert_eq!(
        key(debit("acc-1", 1, "EUR", 10)),
        key(debit("acc-1", 1, "EUR", 10))
    );
    assert_eq!(
        key(debit("acc-1", 1, "EUR", 10)),
        key(debit("acc-1", 1, "EUR", 99))
    );
    assert_ne!(
        key(debit("acc-1", 1, "EUR", 10)),
        key(debit("acc-2", 1, "EUR", 10))
    );
    assert_ne!(
        key(debit("acc-1", 1, "EUR", 10)),
        key(debit("acc-1", 1, "USD", 10))
    );
    assert_ne!(key(debit("ab", 1, "c", 10)), key(debit("a", 1, "bc", 10)));
    assert_eq!(
        key(debit("acc-1", 1, "EUR", 10)),
        "\"acc-1\"\u{1f}\"EUR\"\u{1f}"
    );
}

#[test]
fn the_partition_key_is_independent_of_the_idempotency_key() {
    let first = debit("acc-1", 1, "EUR", 10);
    let retried_elsewhere = debit("acc-2", 1, "EUR", 10);
    let next_debit = debit("acc-1", 2, "EUR", 10);
    assert_eq!(first.idempotency_key(), Some("1\u{1f}".to_owned()));
    assert_eq!(first.idempotency_key(), retried_elsewhere.idempotency_key());
    assert_ne!(first.partition_key(), retried_elsewhere.partition_key());
    assert_ne!(first.idempotency_key(), next_debit.idempotency_key());
    assert_eq!(first.partition_key(), next_debit.partition_key());

    // Events that mark only one of the keys have `None` for the other.
    assert_eq!(order().partition_key(), None);
    assert!(order().idempotency_key().is_some());
    assert_eq!(transfer("a", "b", 1).partition_key(), None);
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "stock.adjusted")]
struct StockAdjusted {
    #[event(idempotency_key, partition_key)]
    sku: String,
    delta: i64,
}

#[test]
fn a_field_may_be_part_of_both_keys() {
    let event = StockAdjusted {
        sku: "A-1".into(),
        delta: -2,
    };
    assert_eq!(event.partition_key(), Some("\"A-1\"\u{1f}".to_owned()));
    assert_eq!(event.partition_key(), event.idempotency_key());
    assert_eq!(event.delta, -2);
}

#[test]
fn without_marked_fields_there_is_no_partition_key() {
    let event = Unmarked { note: "x".into() };
    assert_eq!(event.partition_key(), None);
}

#[test]
fn the_report_displays_every_field() {
    let report = UserCreated {
        email: "nope".into(),
        ..user()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        report.to_string(),
        "invalid field email: must be a valid email address"
    );
    let report = order_with_two_bad_items().validate().unwrap_err();
    assert_eq!(
        report.to_string(),
        "2 invalid fields: items[0].sku: must not be empty; items[1].sku: must not be empty"
    );
}

fn order_with_two_bad_items() -> OrderPlaced {
    OrderPlaced {
        items: vec![item(""), item("")],
        ..order()
    }
}

/// Generic structs get impls with the struct's own bounds.
#[derive(Debug, Serialize, Deserialize, Validate)]
struct Page<T: Validate> {
    #[event(nested)]
    entries: Vec<T>,
    #[event(range(max = 100))]
    size: u8,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "page.loaded")]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
struct PageLoaded<T>
where
    T: Validate + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    #[event(nested)]
    page: Page<T>,
}

#[test]
fn generic_structs_are_supported() {
    let page = Page {
        entries: vec![item("a"), item("")],
        size: 101,
    };
    let report = page.validate().unwrap_err();
    assert_eq!(
        report.to_string(),
        "2 invalid fields: entries[1].sku: must not be empty; \
         size: must be at most 100 (it is 101)"
    );
    let event = PageLoaded {
        page: Page {
            entries: vec![item("")],
            size: 1,
        },
    };
    assert_eq!(PageLoaded::<Item>::NAME, "page.loaded");
    assert_eq!(
        only_error(&event),
        pair("page.entries[0].sku", "must not be empty")
    );
}

/// The generated code's own variables do not shadow the user's functions, which may take `&str`
/// for a `String` field.
fn report(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("report says no")
    } else {
        Ok(())
    }
}

fn path(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("path says no")
    } else {
        Ok(())
    }
}

#[derive(Validate)]
struct Hygiene {
    #[event(custom = report)]
    value: String,
    #[event(custom = path)]
    r#type: String,
}

#[test]
fn user_functions_are_not_shadowed_and_raw_names_are_unescaped() {
    let report = Hygiene {
        value: String::new(),
        r#type: String::new(),
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        report.to_string(),
        "2 invalid fields: value: report says no; type: path says no"
    );
}

/// Three versions of one event: v1 had a full name, v2 split it, v3 added a locale.
mod evolution {
    use events::{DecodeError, Envelope, Event};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, Event)]
    #[event(name = "member.joined")]
    struct JoinedV1 {
        name: String,
    }

    #[derive(Debug, Serialize, Deserialize, Event)]
    #[event(name = "member.joined", version = 2, previous = JoinedV1)]
    struct JoinedV2 {
        first: String,
        last: String,
    }

    impl From<JoinedV1> for JoinedV2 {
        fn from(v1: JoinedV1) -> Self {
            let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
            Self {
                first: first.into(),
                last: last.into(),
            }
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
    #[event(name = "member.joined", version = 3, previous = JoinedV2)]
    struct Joined {
        first: String,
        last: String,
        #[event(length(min = 2, max = 5))]
        locale: String,
    }

    impl From<JoinedV2> for Joined {
        fn from(v2: JoinedV2) -> Self {
            Self {
                first: v2.first,
                last: v2.last,
                locale: "en".into(),
            }
        }
    }

    fn envelope(version: u32, body: &str) -> Envelope {
        Envelope::new("member.joined", version, "members", body.into())
    }

    #[test]
    fn older_versions_are_upcast_step_by_step() {
        let ada = |locale: &str| Joined {
            first: "Ada".into(),
            last: "Lovelace".into(),
            locale: locale.into(),
        };
        assert_eq!(
            envelope(1, r#"{"name":"Ada Lovelace"}"#).decode_body::<Joined>(),
            Ok(ada("en"))
        );
        assert_eq!(
            envelope(2, r#"{"first":"Ada","last":"Lovelace"}"#).decode_body::<Joined>(),
            Ok(ada("en"))
        );
        assert_eq!(
            envelope(3, r#"{"first":"Ada","last":"Lovelace","locale":"fr"}"#)
                .decode_body::<Joined>(),
            Ok(ada("fr"))
        );
    }

    #[test]
    fn an_old_body_that_is_not_its_version_says_so_and_newer_versions_are_unknown() {
        let error = envelope(1, r#"{"first":"Ada"}"#)
            .decode_body::<Joined>()
            .unwrap_err();
        assert!(
            matches!(&error, DecodeError::Body { reason, .. } if reason.contains("missing field `name`")),
            "{error}"
        );
        assert_eq!(
            envelope(4, "{}").decode_body::<Joined>(),
            Err(DecodeError::UnknownVersion {
                event_type: "member.joined".into(),
                found: 4,
                known: 3
            })
        );
        // The upcast event is validated as the current version.
        let invalid = envelope(3, r#"{"first":"A","last":"B","locale":"x"}"#);
        assert!(matches!(
            invalid.decode_body::<Joined>(),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
