-- E-prescriptions (TT 26/2025/TT-BYT): one row per prescription code, one per line (a
-- MedicationRequest). The MedicationRequests themselves are ordinary resources; these rows hold
-- what dispensing needs to decide at once and atomically: the status, the validity for
-- dispensing, and the quantity prescribed and dispensed so far on each line.
CREATE TABLE rx_prescription (
    code         TEXT   PRIMARY KEY,
    facility     TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    patient      TEXT   NOT NULL,
    prescriber   TEXT   NOT NULL,
    issued       BIGINT NOT NULL,
    valid_until  BIGINT NOT NULL,
    -- active | cancelled | replaced | completed
    status       TEXT   NOT NULL,
    replaced_by  TEXT,
    reason       TEXT
);
CREATE INDEX rx_prescription_patient ON rx_prescription (patient);

CREATE TABLE rx_line (
    request_id  TEXT   PRIMARY KEY,
    code        TEXT   NOT NULL,
    quantity    DOUBLE PRECISION NOT NULL,
    dispensed   DOUBLE PRECISION NOT NULL
);
CREATE INDEX rx_line_code ON rx_line (code);
