//! The Catalyst record format: load, save, move, delete and update sessions kept as
//! Catalyst::Plugin::Session 0.43 with Store::FastMmap keeps them — three keys per session
//! (`session:SID`, `expires:SID`, `flash:SID`), Storable values, no cache expiry.
//!
//! Each key is changed atomically on its own; no step spans two keys. The order of writes is
//! chosen so that a reader (Rust or Perl) never finds a session without its expiry: a new
//! session writes `expires:` before `session:`, a deletion removes `session:` first, and an
//! extension only moves an `expires:` that is still there (it never brings one back).

use super::Client;
use super::key;
use super::save::{Applied, CAS_ROUNDS, ID_ATTEMPTS, Moved, Saved, apply, gone, move_record, swap};
use super::tier::Tier;
use crate::session::catalyst_record::{
    CatalystConfig, CatalystRecord, EXPIRES_PREFIX, FLASH_PREFIX, SESSION_PREFIX, decode_expires,
    encode_expires,
};
use crate::session::data::{NewReason, Session, State};
use crate::session::error::{Error, Result};
use crate::session::id::{IdFormat, SessionId};
use crate::session::record::{Binding, Map, Record, Times};
use crate::{Expiry, Update};

/// `session:SID`: the session hash of `id`.
fn session_key(id: &SessionId) -> Vec<u8> {
    key(SESSION_PREFIX.as_bytes(), id)
}

/// `expires:SID`: when the session `id` ends.
fn expires_key(id: &SessionId) -> Vec<u8> {
    key(EXPIRES_PREFIX.as_bytes(), id)
}

/// `flash:SID`: the flash of the session `id`.
fn flash_key(id: &SessionId) -> Vec<u8> {
    key(FLASH_PREFIX.as_bytes(), id)
}

/// A new id of Catalyst's shape.
fn new_id() -> Result<SessionId> {
    IdFormat::Catalyst.generate()
}

/// The Catalyst way of keeping sessions, with Catalyst's options.
#[derive(Clone, Debug)]
pub(crate) struct Catalyst {
    pub(super) config: CatalystConfig,
}

/// What a Catalyst load found.
enum Found {
    Missing,
    Dropped(NewReason),
    Live {
        record: CatalystRecord,
        expires: u64,
    },
}

impl Catalyst {
    /// The cache key of the session hash of `id` (`session:SID`).
    pub(super) fn key(&self, id: &SessionId) -> Vec<u8> {
        session_key(id)
    }

    /// Catalyst's `expires:SID` for `id`, if there is one.
    fn expires(&self, tier: &Tier, id: &SessionId) -> Result<Option<u64>> {
        tier.get(&expires_key(id))?
            .map(|bytes| decode_expires(&bytes))
            .transpose()
    }

    /// Moves `expires:SID` to `at` if it is still there and earlier (never back, never
    /// recreated after a deletion). Returns the expiry now stored, if any.
    fn extend(&self, tier: &Tier, id: &SessionId, at: u64) -> Result<Option<u64>> {
        let bytes = encode_expires(at)?;
        Ok(tier.update_with(&expires_key(id), |current| match current {
            None => (Update::Keep, None),
            Some(current) => match decode_expires(current) {
                Ok(old) if old >= at => (Update::Keep, Some(old)),
                // A damaged expiry is replaced: Catalyst reads it as 0 and would end the
                // session; this request has just shown the session to be live.
                _ => (Update::SetWith(bytes, Expiry::Never), Some(at)),
            },
        })?)
    }

    /// Deletes a session's three keys, `session:` first (Catalyst's order).
    pub(super) fn delete(&self, tier: &Tier, id: &SessionId) -> Result<bool> {
        let live = tier.remove(&session_key(id))?;
        tier.remove(&expires_key(id))?;
        tier.remove(&flash_key(id))?;
        Ok(live)
    }

    /// A new session in Catalyst mode: `__created` now, bound as `verify_*` say.
    pub(super) fn fresh(
        &self,
        tier: &Tier,
        reason: NewReason,
        client: &Client<'_>,
    ) -> Result<Session> {
        let now = tier.now();
        let times = Times::written(now, now, now.saturating_add(self.config.expires));
        let binding = Binding {
            address: self.config.verify_address.then(|| client.address_text()),
            user_agent: self
                .config
                .verify_user_agent
                .then(|| client.user_agent.unwrap_or("").to_owned()),
        };
        Ok(Session::new(new_id()?, reason, times, binding))
    }

    /// Whether the request of `client` may use a session bound as `binding` (Catalyst
    /// checks `__address` only when present, and `__user_agent` always).
    fn mismatch(&self, binding: &Binding, client: &Client<'_>) -> Option<NewReason> {
        if self.config.verify_address
            && let Some(bound) = &binding.address
            && *bound != client.address_text()
        {
            return Some(NewReason::AddressChanged);
        }
        if self.config.verify_user_agent
            && binding.user_agent.as_deref().unwrap_or("") != client.user_agent.unwrap_or("")
        {
            return Some(NewReason::UserAgentChanged);
        }
        None
    }

    /// Catalyst's load: `expires:SID` first (missing or past: the session is deleted, as
    /// Catalyst deletes it, "session expired"), then `session:SID`, then the binding; a live
    /// session's expiry moves as Catalyst's `extend_session_expires` moves it.
    pub(super) fn load(
        &self,
        tier: &Tier,
        id: Option<&SessionId>,
        client: &Client<'_>,
        deliver_flash: bool,
    ) -> Result<Session> {
        let Some(id) = id else {
            return self.fresh(tier, NewReason::NoId, client);
        };
        let config = &self.config;
        let now = tier.now();
        let (record, stored_expires) = match self.find(tier, id, client, now)? {
            Found::Missing => return self.fresh(tier, NewReason::Unknown, client),
            Found::Dropped(reason) => return self.fresh(tier, reason, client),
            Found::Live { record, expires } => (record, expires),
        };
        let due = config.expiry_threshold == 0
            || stored_expires.saturating_sub(config.expiry_threshold) <= now;
        let mut expires = stored_expires;
        let mut extended = false;
        if due {
            let wanted = now.saturating_add(config.expires);
            if wanted > stored_expires {
                match self.extend(tier, id, wanted)? {
                    Some(at) => {
                        extended = at > stored_expires;
                        expires = at;
                    }
                    // Deleted meanwhile (a logout in another worker).
                    None => return self.fresh(tier, NewReason::Unknown, client),
                }
            }
        }
        let times = Times {
            created: record.created,
            updated: record.updated,
            active: now,
            expires,
        };
        let pending = !record.flash.is_empty();
        let mut session = Session::loaded(
            *id,
            Record {
                times,
                data: record.data,
                flash: Map::new(),
                binding: record.binding,
            },
            extended,
        );
        session.flash_pending = pending;
        if deliver_flash && session.flash_pending {
            session.flash_pending = false;
            self.take_flash(tier, &mut session)?;
        }
        Ok(session)
    }

    /// What `id` names now: missing, dropped (and deleted), or live.
    fn find(&self, tier: &Tier, id: &SessionId, client: &Client<'_>, now: u64) -> Result<Found> {
        let expires = self.expires(tier, id)?;
        let Some(bytes) = tier.get(&session_key(id))? else {
            return Ok(Found::Missing);
        };
        let expires = match expires {
            Some(at) if at >= now => at,
            // No expiry, or a past one: Catalyst deletes the session ("session expired").
            _ => {
                self.delete(tier, id)?;
                return Ok(Found::Dropped(NewReason::Expired));
            }
        };
        let record = CatalystRecord::decode(&bytes)?;
        if let Some(reason) = self.mismatch(&record.binding, client) {
            self.delete(tier, id)?;
            return Ok(Found::Dropped(reason));
        }
        Ok(Found::Live { record, expires })
    }

    /// Takes the flash values out of `session:SID` (its `__flash`) in one atomic step.
    pub(super) fn take_flash(&self, tier: &Tier, session: &mut Session) -> Result<()> {
        let taken = tier.try_update(&session_key(&session.id), |current| {
            let Some(bytes) = current else {
                return Ok((Update::Keep, None));
            };
            let mut record = CatalystRecord::decode(bytes)?;
            if record.flash.is_empty() {
                return Ok((Update::Keep, None));
            }
            let flash = std::mem::take(&mut record.flash);
            Ok((
                Update::SetWith(record.encode()?, Expiry::Never),
                Some(flash),
            ))
        })?;
        if let Some(flash) = taken {
            session.flash_in = flash;
        }
        Ok(())
    }

    /// Writes a session not stored yet under a free id: `expires:` first, then `session:`.
    fn write_new(
        &self,
        tier: &Tier,
        record: &CatalystRecord,
        expires: u64,
        first: Option<SessionId>,
    ) -> Result<SessionId> {
        let bytes = record.encode()?;
        let expires_bytes = encode_expires(expires)?;
        let mut id = match first {
            Some(id) => id,
            None => new_id()?,
        };
        for _ in 0..ID_ATTEMPTS {
            if tier.insert(&expires_key(&id), &expires_bytes, Expiry::Never)?
                && tier.insert(&session_key(&id), &bytes, Expiry::Never)?
            {
                return Ok(id);
            }
            id = new_id()?;
        }
        Err(Error::IdCollision)
    }

    /// Catalyst's save: the session hash merged by key into the stored one (compare and
    /// swap on `session:SID`), `__updated` now; then the expiry moves (a changed session
    /// always extends, as in Catalyst).
    pub(super) fn save(&self, tier: &Tier, session: &mut Session) -> Result<Saved> {
        let now = tier.now();
        if session.state == State::New {
            let expires = now.saturating_add(self.config.expires);
            let record = CatalystRecord {
                created: session.times.created,
                updated: now,
                data: session.data.clone(),
                flash: session.flash_out.clone(),
                binding: session.binding.clone(),
                stored: None,
            };
            session.id = self.write_new(tier, &record, expires, Some(session.id))?;
            let times = Times::written(record.created, now, expires);
            session.mark_stored(record.data, times);
            return Ok(Saved::Written);
        }
        match self.expires(tier, &session.id)? {
            Some(at) if at >= now => {}
            _ => {
                self.delete(tier, &session.id)?;
                return Ok(gone(session));
            }
        }
        let decided = swap(
            tier,
            &session_key(&session.id),
            CAS_ROUNDS,
            |current| match current {
                None => Ok(None),
                Some(current) => {
                    let record = self.merge(session, current, now)?;
                    let bytes = record.encode()?;
                    Ok(Some((record, bytes)))
                }
            },
            |decided| match decided {
                None => Update::Keep,
                Some((_, bytes)) => Update::SetWith(bytes.clone(), Expiry::Never),
            },
        )?;
        let Some((record, _)) = decided else {
            return Ok(gone(session));
        };
        let expires = self
            .extend(tier, &session.id, now.saturating_add(self.config.expires))?
            .unwrap_or(session.times.expires);
        let times = Times::written(record.created, now, expires);
        session.mark_stored(record.data, times);
        Ok(Saved::Written)
    }

    /// `session`'s changes applied to the stored hash `current`.
    fn merge(&self, session: &Session, current: &[u8], now: u64) -> Result<CatalystRecord> {
        let stored = CatalystRecord::decode(current)?;
        Ok(merged(session, stored, now))
    }

    /// Catalyst's `change_session_id` for a stored session: the session (with this request's
    /// changes) moves to a new id; the old id's three keys are deleted. The new hash is
    /// written before the old one goes, and the old one goes only as it was read (see
    /// [`move_record`]), so an error at any step leaves the session whole under its old id.
    pub(super) fn change_id(&self, tier: &Tier, session: &mut Session) -> Result<SessionId> {
        let old = session.id;
        let now = tier.now();
        let expires = now.saturating_add(self.config.expires);
        let moved = move_record(
            tier,
            &session_key(&old),
            |stored| {
                let record = merged(session, CatalystRecord::decode(stored)?, now);
                Ok(Some((record.encode()?, record)))
            },
            |bytes, record, to| match to {
                None => self.write_new(tier, record, expires, None),
                Some(id) => {
                    tier.set_with(&session_key(&id), bytes, Expiry::Never)?;
                    Ok(id)
                }
            },
            |id| {
                let _ = self.delete(tier, id);
            },
        )?;
        match moved {
            Moved::To(id, record) => {
                // The old id's other keys: without its `session:` hash they hold no session,
                // so a failure to delete them now leaves only garbage, not the session.
                let _ = self.delete(tier, &old);
                session.id = id;
                let times = Times::written(record.created, now, expires);
                session.mark_stored(record.data, times);
            }
            Moved::Gone => {
                gone(session);
                self.delete(tier, &old)?;
                session.id = new_id()?;
            }
        }
        Ok(old)
    }

    /// Catalyst's `get_and_set_session_data` on `session:SID`: `f` runs under the lock.
    pub(super) fn update<R>(
        &self,
        tier: &Tier,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        let now = tier.now();
        let expires = match self.expires(tier, id)? {
            Some(at) if at >= now => at,
            Some(_) => {
                self.delete(tier, id)?;
                return Ok(None);
            }
            None => return Ok(None),
        };
        // The result, and whether `f` invalidated the session (its other keys go after).
        let outcome = tier.try_update(&session_key(id), |current| {
            let Some(bytes) = current else {
                return Ok((Update::Keep, None));
            };
            let stored = CatalystRecord::decode(bytes)?;
            let pending_flash = stored.flash.clone();
            let original = stored.stored;
            let times = Times {
                created: stored.created,
                updated: stored.updated,
                active: now,
                expires,
            };
            let mut session = Session::loaded(
                *id,
                Record {
                    times,
                    data: stored.data,
                    flash: Map::new(),
                    binding: stored.binding,
                },
                false,
            );
            // Pending flash values stay pending unless `f` changes them.
            session.flash_out = pending_flash.clone();
            let (result, session) = match apply(session, &pending_flash, f) {
                Applied::Invalidated(result) => return Ok((Update::Remove, Some((result, true)))),
                Applied::Unchanged(result) => return Ok((Update::Keep, Some((result, false)))),
                Applied::Changed(result, session) => (result, *session),
            };
            let record = CatalystRecord {
                created: session.times.created,
                updated: now,
                data: session.data,
                flash: session.flash_out,
                binding: session.binding,
                stored: original,
            };
            let update = Update::SetWith(record.encode()?, Expiry::Never);
            Ok((update, Some((result, false))))
        })?;
        Ok(match outcome {
            Some((result, true)) => {
                self.delete(tier, id)?;
                Some(result)
            }
            Some((result, false)) => Some(result),
            None => None,
        })
    }
}

/// `session`'s changes applied to the stored hash: the data merged by key, flash values
/// added, `__updated` now, everything else as stored.
fn merged(session: &Session, stored: CatalystRecord, now: u64) -> CatalystRecord {
    let mut flash = stored.flash;
    for (k, v) in &session.flash_out {
        flash.insert(k.clone(), v.clone());
    }
    CatalystRecord {
        created: stored.created,
        updated: now,
        data: session.merged_data(Some(&stored.data)),
        flash,
        binding: stored.binding,
        stored: stored.stored,
    }
}
