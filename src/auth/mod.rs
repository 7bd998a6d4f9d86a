//! Who may see what (issue 5): accounts, tokens, the access policy and the audit trail. So far:
//! password hashing and password rules.

pub mod password;
