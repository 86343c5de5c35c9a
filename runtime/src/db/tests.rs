use std::collections::HashMap;

use super::*;

#[test]
fn redact_hides_the_password() {
    assert_eq!(
        redact("postgres://u:pw@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(redact("host=h dbname=d"), "host=h dbname=d");
}

fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[test]
fn a_url_without_database_is_rejected_by_name() {
    let err = parse_url(&env(&[]), "ORDER_DATABASE_URL", "postgres://u@h:5432").unwrap_err();
    assert!(err.to_string().contains("ORDER_DATABASE_URL"));
}

#[test]
fn sslmode_defaults_to_prefer_and_takes_every_libpq_mode() {
    let parse = |url: &str| parse_url(&env(&[]), "DB", url).unwrap();
    assert_eq!(parse("postgres://u@h/db").sslmode(), SslMode::Prefer);
    for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
        let config = parse(&format!("postgres://u@h/db?sslmode={mode}"));
        assert_eq!(config.sslmode().as_str(), mode);
        let config = parse(&format!("host=h dbname=db sslmode={mode} user=u"));
        assert_eq!(config.sslmode().as_str(), mode);
        assert_eq!(config.get_user(), Some("u"));
    }
    // verify-* reach tokio-postgres as require: TLS or no connection.
    let config = parse("postgres://u@h/db?application_name=a&sslmode=verify-full");
    assert_eq!(
        config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    assert_eq!(config.get_application_name(), Some("a"));
}

#[test]
fn an_unknown_sslmode_names_the_variable_and_the_choices() {
    let err = parse_url(&env(&[]), "DB", "postgres://u:pw@h/db?sslmode=verify").unwrap_err();
    assert_eq!(err.name, "DB");
    assert!(err.to_string().contains("verify-full"), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");
}

#[test]
fn only_a_whole_sslmode_parameter_counts() {
    let take = |url: &str| take_sslmode(url).unwrap();
    assert_eq!(
        take("postgres://u@h/db?xsslmode=verify-full"),
        ("postgres://u@h/db?xsslmode=verify-full".to_owned(), None)
    );
    assert_eq!(
        take("postgres://u:sslmode=verify-ca@h/db"),
        ("postgres://u:sslmode=verify-ca@h/db".to_owned(), None)
    );
    assert_eq!(
        take("dbname=d sslmode=verify-ca"),
        (
            "dbname=d sslmode=require".to_owned(),
            Some(SslMode::VerifyCa)
        )
    );
    assert_eq!(
        take("postgres://h/d?sslmode=verify-ca&sslmode=disable#x"),
        (
            "postgres://h/d?sslmode=require&sslmode=disable#x".to_owned(),
            Some(SslMode::Disable)
        )
    );
    assert!(take_sslmode("postgres://u@h/db?sslmode=verify-cax").is_err());
}

#[test]
fn a_bad_pg_ca_file_names_the_variable_and_the_path() {
    let err = parse_url(
        &env(&[(ENV_PG_CA_FILE, "/nonexistent/ca.pem")]),
        "DB",
        "postgres://u@h/db?sslmode=verify-full",
    )
    .unwrap_err();
    assert_eq!(err.name, ENV_PG_CA_FILE);
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
