//! How a sink tells PostgreSQL trouble worth retrying from a mismatch retrying cannot fix.

/// True for errors retrying cannot fix: SQLSTATE class 42 (syntax error or access rule
/// violation: a missing table or column, a schema older than the binary), 3D (no such
/// database), 28 (authorization), and a bad connection string or a column the query expects
/// but the row lacks. Anything else — connection trouble, timeouts, serialization failures,
/// deadlocks, a server shutting down — is worth retrying.
pub fn is_fatal(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("42") || c.starts_with("3D") || c.starts_with("28")),
        sqlx::Error::Configuration(_) | sqlx::Error::ColumnNotFound(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_trouble_is_retried_a_bad_config_is_not() {
        assert!(!is_fatal(&sqlx::Error::PoolTimedOut));
        assert!(!is_fatal(&sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(is_fatal(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
