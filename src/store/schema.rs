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

// The index tables have no primary key in the database (rows are found by resource_pk or by
// value); diesel's `table!` needs one, so each names the columns that identify a row.
diesel::table! {
    ix_string (resource_pk, param, exact) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        norm -> Text,
        exact -> Text,
    }
}

diesel::table! {
    ix_reference (resource_pk, param, target) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        target -> Text,
    }
}

diesel::table! {
    ix_date (resource_pk, param, low, high) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        low -> BigInt,
        high -> BigInt,
        wide -> Bool,
    }
}

diesel::table! {
    ix_number (resource_pk, param, value) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        value -> Double,
    }
}

diesel::table! {
    ix_quantity (resource_pk, param, system, code, value) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        system -> Text,
        code -> Text,
        value -> Double,
    }
}

diesel::table! {
    ix_uri (resource_pk, param, uri) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        uri -> Text,
    }
}

diesel::table! {
    ix_composite (resource_pk, param, system1, code1, system2, code2) {
        resource_pk -> BigInt,
        res_type -> Text,
        param -> Text,
        system1 -> Text,
        code1 -> Text,
        system2 -> Text,
        code2 -> Text,
        value2 -> Nullable<Double>,
        low2 -> Nullable<BigInt>,
        high2 -> Nullable<BigInt>,
    }
}

diesel::table! {
    yba_meta (key) {
        key -> Text,
        value -> Text,
    }
}

diesel::table! {
    auth_user (username) {
        username -> Text,
        role -> Text,
        fhir_user -> Nullable<Text>,
        organization -> Nullable<Text>,
        password_hash -> Text,
        disabled -> Bool,
        created -> BigInt,
    }
}

diesel::table! {
    auth_client (client_id) {
        client_id -> Text,
        name -> Text,
        organization -> Nullable<Text>,
        secret_hash -> Nullable<Text>,
        public_key -> Nullable<Text>,
        scopes -> Text,
        disabled -> Bool,
        created -> BigInt,
    }
}

diesel::table! {
    auth_session (sid) {
        sid -> Text,
        subject -> Text,
        client_id -> Text,
        scopes -> Text,
        created -> BigInt,
        expires -> BigInt,
        revoked -> Bool,
    }
}

diesel::table! {
    auth_refresh (token_hash) {
        token_hash -> Text,
        sid -> Text,
        expires -> BigInt,
        used -> Bool,
    }
}

diesel::table! {
    auth_assertion (client_id, jti) {
        client_id -> Text,
        jti -> Text,
        expires -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    resource_version,
    ix_token,
    ix_string,
    ix_reference,
    ix_date,
    ix_number,
    ix_quantity,
    ix_uri,
    ix_composite,
    sync_link,
);

diesel::table! {
    rx_prescription (code) {
        code -> Text,
        facility -> Text,
        kind -> Text,
        patient -> Text,
        prescriber -> Text,
        issued -> BigInt,
        valid_until -> BigInt,
        status -> Text,
        replaced_by -> Nullable<Text>,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    rx_line (request_id) {
        request_id -> Text,
        code -> Text,
        quantity -> Double,
        dispensed -> Double,
    }
}

diesel::table! {
    import_mark (key) {
        key -> Text,
        at -> BigInt,
    }
}

diesel::table! {
    bulk_job (id) {
        id -> Text,
        kind -> Text,
        owner -> Text,
        status -> Text,
        request -> Text,
        progress -> Text,
        created -> BigInt,
        updated -> BigInt,
        result -> Nullable<Text>,
    }
}

diesel::table! {
    bulk_file (job_id, seq) {
        job_id -> Text,
        seq -> BigInt,
        res_type -> Text,
        count -> BigInt,
        body -> Text,
    }
}

diesel::table! {
    sub_state (name) {
        name -> Text,
        txid -> Nullable<BigInt>,
        pk -> Nullable<BigInt>,
        holder -> Nullable<Text>,
        lease_until -> BigInt,
    }
}

diesel::table! {
    sub_queue (seq) {
        seq -> BigInt,
        sub_id -> Text,
        res_type -> Text,
        res_id -> Text,
        version -> BigInt,
        at -> BigInt,
    }
}

diesel::table! {
    sync_state (name) {
        name -> Text,
        txid -> Nullable<BigInt>,
        pk -> Nullable<BigInt>,
        value -> Nullable<Text>,
    }
}

diesel::table! {
    sync_link (res_type, res_id) {
        res_type -> Text,
        res_id -> Text,
        local_version -> BigInt,
        upstream_version -> BigInt,
    }
}

diesel::table! {
    sync_conflict (seq) {
        seq -> BigInt,
        res_type -> Text,
        res_id -> Text,
        local_version -> BigInt,
        upstream_version -> Nullable<BigInt>,
        kind -> Text,
        detail -> Text,
        at -> BigInt,
        resolved -> Nullable<BigInt>,
    }
}
