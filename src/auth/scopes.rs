//! SMART on FHIR scopes (v2, with the v1 forms understood): `patient/Observation.rs`,
//! `user/*.cruds`, `system/Patient.read`. A token's scopes say what it may ever do; the access
//! policy then says to which records.

use std::fmt;

/// What a scope lets a token do to a resource type (SMART v2's `c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn bit(self) -> u8 {
        match self {
            Perm::Create => 1,
            Perm::Read => 2,
            Perm::Update => 4,
            Perm::Delete => 8,
            Perm::Search => 16,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }
}

/// Whose data a scope speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// The signed-in patient's own record.
    Patient,
    /// What the signed-in person may see.
    User,
    /// A backend system acting for its organization.
    System,
}

impl Context {
    fn name(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` is `*`.
    pub ty: Option<String>,
    perms: u8,
}

impl Scope {
    /// Parses one resource scope; `None` for anything else (`openid`, `launch/patient`, a
    /// malformed scope).
    pub fn parse(s: &str) -> Option<Scope> {
        let (context, rest) = s.split_once('/')?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (ty, perms) = rest.split_once('.')?;
        // SMART v2 scopes may narrow by search parameters (`?category=...`): not granted here
        // rather than granted wider than asked.
        if perms.contains('?') || ty.is_empty() {
            return None;
        }
        let ty = if ty == "*" {
            None
        } else if crate::fhir::schema::R4.resource_type(ty).is_some() {
            Some(ty.to_string())
        } else {
            return None;
        };
        let bits = match perms {
            "read" => Perm::Read.bit() | Perm::Search.bit(),
            "write" => Perm::Create.bit() | Perm::Update.bit() | Perm::Delete.bit(),
            "*" => 31,
            v2 => {
                // The letters in the order c r u d s, each at most once.
                let mut bits = 0u8;
                let mut last = 0usize;
                for ch in v2.chars() {
                    let pos = "cruds".find(ch)? + 1;
                    if pos <= last {
                        return None;
                    }
                    last = pos;
                    bits |= 1 << (pos - 1);
                }
                if bits == 0 {
                    return None;
                }
                bits
            }
        };
        Some(Scope {
            context,
            ty,
            perms: bits,
        })
    }

    pub fn allows(&self, ty: &str, perm: Perm) -> bool {
        self.perms & perm.bit() != 0 && self.ty.as_deref().is_none_or(|t| t == ty)
    }

    /// This scope cut down to what `ceiling` also allows (None if nothing is left).
    fn within(&self, ceiling: &Scope) -> Option<Scope> {
        if ceiling.context != self.context {
            return None;
        }
        let ty = match (&ceiling.ty, &self.ty) {
            (None, t) => t.clone(),
            (Some(c), None) => Some(c.clone()),
            (Some(c), Some(t)) if c == t => Some(t.clone()),
            _ => return None,
        };
        let perms = self.perms & ceiling.perms;
        (perms != 0).then_some(Scope {
            context: self.context,
            ty,
            perms,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}.",
            self.context.name(),
            self.ty.as_deref().unwrap_or("*")
        )?;
        for p in [
            Perm::Create,
            Perm::Read,
            Perm::Update,
            Perm::Delete,
            Perm::Search,
        ] {
            if self.perms & p.bit() != 0 {
                write!(f, "{}", p.letter())?;
            }
        }
        Ok(())
    }
}

/// The scopes of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    pub resources: Vec<Scope>,
    /// `openid`, `fhirUser`, `offline_access`, `launch/patient`, ...
    pub other: Vec<String>,
}

/// Scopes a server grants that are not about resources.
const KNOWN_OTHER: &[&str] = &[
    "openid",
    "fhirUser",
    "offline_access",
    "online_access",
    "launch/patient",
];

impl Scopes {
    /// Parses a space-separated scope string, dropping what this server does not grant.
    pub fn parse(s: &str) -> Scopes {
        let mut out = Scopes::default();
        for word in s.split_ascii_whitespace() {
            if let Some(scope) = Scope::parse(word) {
                if !out.resources.contains(&scope) {
                    out.resources.push(scope);
                }
            } else if KNOWN_OTHER.contains(&word) && !out.other.iter().any(|o| o == word) {
                out.other.push(word.to_string());
            }
        }
        out
    }

    /// Whether any scope of `context` lets the token `perm` resources of `ty`.
    pub fn allows(&self, context: Context, ty: &str, perm: Perm) -> bool {
        self.resources
            .iter()
            .any(|s| s.context == context && s.allows(ty, perm))
    }

    pub fn has(&self, other: &str) -> bool {
        self.other.iter().any(|o| o == other)
    }

    /// What may be granted of `requested` under `ceiling` (the most the account or client may
    /// have). An empty request asks for the whole ceiling.
    pub fn grant(requested: &Scopes, ceiling: &Scopes) -> Scopes {
        if requested.resources.is_empty() && requested.other.is_empty() {
            return ceiling.clone();
        }
        let mut out = Scopes::default();
        for r in &requested.resources {
            for c in &ceiling.resources {
                if let Some(s) = r.within(c)
                    && !out.resources.contains(&s)
                {
                    out.resources.push(s);
                }
            }
        }
        out.other = requested
            .other
            .iter()
            .filter(|o| ceiling.has(o))
            .cloned()
            .collect();
        out
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in self
            .other
            .iter()
            .map(|o| o.to_string())
            .chain(self.resources.iter().map(|r| r.to_string()))
        {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(&s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let s = Scope::parse("patient/Observation.rs").unwrap();
        assert!(s.allows("Observation", Perm::Read));
        assert!(s.allows("Observation", Perm::Search));
        assert!(!s.allows("Observation", Perm::Create));
        assert!(!s.allows("Condition", Perm::Read));
        let all = Scope::parse("user/*.cruds").unwrap();
        assert!(all.allows("Patient", Perm::Delete));
        let v1 = Scope::parse("system/Patient.read").unwrap();
        assert!(v1.allows("Patient", Perm::Search) && !v1.allows("Patient", Perm::Update));
        let w = Scope::parse("user/Encounter.write").unwrap();
        assert!(w.allows("Encounter", Perm::Create) && !w.allows("Encounter", Perm::Read));
        assert_eq!(
            Scope::parse("system/*.*").unwrap().to_string(),
            "system/*.cruds"
        );
    }

    #[test]
    fn malformed_scopes_grant_nothing() {
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "patient/Nonsense.rs",
            "clinic/Patient.rs",
            "patient/.rs",
            "patient/Observation.rs?category=laboratory",
            "Observation.rs",
        ] {
            assert!(Scope::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn grants_never_exceed_the_ceiling() {
        let ceiling = Scopes::parse("openid fhirUser patient/*.rs patient/Consent.cruds");
        let asked = Scopes::parse(
            "patient/Observation.cruds patient/Consent.cu system/*.cruds offline_access openid",
        );
        let got = Scopes::grant(&asked, &ceiling);
        assert_eq!(
            got.to_string(),
            "openid patient/Observation.rs patient/Consent.cu"
        );
        assert!(!got.allows(Context::Patient, "Observation", Perm::Create));
        assert!(!got.allows(Context::System, "Observation", Perm::Read));
        assert_eq!(Scopes::grant(&Scopes::default(), &ceiling), ceiling);
        // Something asked for that is all outside the ceiling grants nothing, not everything.
        let none = Scopes::grant(&Scopes::parse("system/*.cruds"), &ceiling);
        assert!(none.resources.is_empty());
    }
}
