//! Diesel table definitions, the same on both engines (see `migrations/`).

diesel::table! {
    resource_version (pk) {
        pk -> BigInt,
        res_type -> Text,
        res_id -> Text,
        version -> BigInt,
        is_current -> Bool,
        deleted -> Bool,
        method -> SmallInt,
        txid -> BigInt,
        last_updated -> BigInt,
        body -> Text,
    }
}

diesel::table! {
    ix_token (resource_pk, param, system, code) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        system -> Text,
        code -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(resource_version, ix_token);
