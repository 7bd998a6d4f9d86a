//! E-prescription bookkeeping: each prescription's status and validity, and each line's
//! prescribed and dispensed quantities. Dispensing adds to a line with one conditional
//! `UPDATE`, so concurrent pharmacies can never take more than was prescribed.

use diesel::prelude::*;

use super::StoreError;
use super::schema::{rx_line, rx_prescription};
use super::session::Session;

type Result<T> = std::result::Result<T, StoreError>;

/// A prescription (one code).
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = rx_prescription)]
pub struct RxRow {
    pub code: String,
    pub facility: String,
    pub kind: String,
    /// The Patient's id.
    pub patient: String,
    /// The prescriber, as `Practitioner/id` (or `PractitionerRole/id`).
    pub prescriber: String,
    pub issued: i64,
    pub valid_until: i64,
    pub status: String,
    pub replaced_by: Option<String>,
    pub reason: Option<String>,
}

/// A line of a prescription: one MedicationRequest.
#[derive(Debug, Clone, Queryable, Insertable)]
#[diesel(table_name = rx_line)]
pub struct RxLine {
    pub request_id: String,
    pub code: String,
    pub quantity: f64,
    pub dispensed: f64,
}

impl Session<'_> {
    /// Adds a prescription; false if its code is taken. (Looked up first: a failed insert would
    /// abort the PostgreSQL transaction. Two transactions drawing the same random code at the
    /// same instant, one chance in 36^7 squared, would see the primary key refuse the second.)
    pub fn insert_prescription(&mut self, row: &RxRow, lines: &[RxLine]) -> Result<bool> {
        if self.prescription(&row.code)?.is_some() {
            return Ok(false);
        }
        diesel::insert_into(rx_prescription::table)
            .values(row)
            .execute(self.db_mut())?;
        for l in lines {
            diesel::insert_into(rx_line::table)
                .values(l)
                .execute(self.db_mut())?;
        }
        Ok(true)
    }

    pub fn prescription(&mut self, code: &str) -> Result<Option<RxRow>> {
        Ok(rx_prescription::table
            .filter(rx_prescription::code.eq(code))
            .first::<RxRow>(self.db_mut())
            .optional()?)
    }

    pub fn prescription_lines(&mut self, code: &str) -> Result<Vec<RxLine>> {
        Ok(rx_line::table
            .filter(rx_line::code.eq(code))
            .order(rx_line::request_id)
            .load::<RxLine>(self.db_mut())?)
    }

    /// The line a MedicationRequest is, if it is one of an issued prescription.
    pub fn prescription_line(&mut self, request_id: &str) -> Result<Option<RxLine>> {
        Ok(rx_line::table
            .filter(rx_line::request_id.eq(request_id))
            .first::<RxLine>(self.db_mut())
            .optional()?)
    }

    /// Takes `quantity` from a line if that much is left; false (nothing changed) if not. One
    /// statement: on PostgreSQL a concurrent dispense of the same line waits for this one's
    /// transaction and then re-checks the condition; SQLite has one writer.
    pub fn take_from_line(&mut self, request_id: &str, quantity: f64) -> Result<bool> {
        let n = diesel::update(
            rx_line::table
                .filter(rx_line::request_id.eq(request_id))
                .filter((rx_line::dispensed + quantity).le(rx_line::quantity + 1e-9)),
        )
        .set(rx_line::dispensed.eq(rx_line::dispensed + quantity))
        .execute(self.db_mut())?;
        Ok(n > 0)
    }

    /// Sets a prescription's status (with what replaced it, or why), if it is still `from`;
    /// false if it was not.
    pub fn set_prescription_status(
        &mut self,
        code: &str,
        from: &str,
        to: &str,
        replaced_by: Option<&str>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let n = diesel::update(
            rx_prescription::table
                .filter(rx_prescription::code.eq(code))
                .filter(rx_prescription::status.eq(from)),
        )
        .set((
            rx_prescription::status.eq(to),
            rx_prescription::replaced_by.eq(replaced_by),
            rx_prescription::reason.eq(reason),
        ))
        .execute(self.db_mut())?;
        Ok(n > 0)
    }
}
