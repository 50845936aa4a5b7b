//! Catalyst mode: load, save, move, delete and update sessions kept as
//! Catalyst::Plugin::Session 0.43 with Store::FastMmap keeps them — three keys per session
//! (`session:SID`, `expires:SID`, `flash:SID`), Storable values, no cache expiry.
//!
//! Each key is changed atomically on its own; no step spans two keys. The order of writes is
//! chosen so that a reader (Rust or Perl) never finds a session without its expiry: a new
//! session writes `expires:` before `session:`, a deletion removes `session:` first, and an
//! extension only moves an `expires:` that is still there (it never brings one back).

use super::save::{Applied, CAS_ROUNDS, ID_ATTEMPTS, apply, gone, set_encoded};
use super::{Client, Saved, SessionStore};
use crate::session::catalyst_record::{
    CatalystConfig, CatalystRecord, EXPIRES_PREFIX, FLASH_PREFIX, SESSION_PREFIX, decode_expires,
    encode_expires,
};
use crate::session::data::{NewReason, Session, State};
use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::record::{Binding, Map, Record, Times};
use crate::{Expiry, Update};

/// The cache key `prefix + id`.
fn key(prefix: &str, id: &SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + id.as_str().len());
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(id.as_str().as_bytes());
    key
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

impl SessionStore {
    /// Catalyst's `expires:SID` for `id`, if there is one.
    fn catalyst_expires(&self, id: &SessionId) -> Result<Option<u64>> {
        self.inner
            .records
            .get(&key(EXPIRES_PREFIX, id))?
            .map(|bytes| decode_expires(&bytes))
            .transpose()
    }

    /// Moves `expires:SID` to `at` if it is still there and earlier (never back, never
    /// recreated after a deletion). Returns the expiry now stored, if any.
    fn catalyst_extend(&self, id: &SessionId, at: u64) -> Result<Option<u64>> {
        let bytes = encode_expires(at)?;
        let after =
            self.inner
                .records
                .update(&key(EXPIRES_PREFIX, id), |current| match current {
                    None => Update::Keep,
                    Some(current) => match decode_expires(current) {
                        Ok(old) if old >= at => Update::Keep,
                        // A damaged expiry is replaced: Catalyst reads it as 0 and would end the
                        // session; this request has just shown the session to be live.
                        _ => Update::SetWith(bytes, Expiry::Never),
                    },
                })?;
        after.map(|stored| decode_expires(&stored)).transpose()
    }

    /// Deletes a session's three keys, `session:` first (Catalyst's order).
    pub(super) fn catalyst_delete_all(&self, id: &SessionId) -> Result<bool> {
        let records = &self.inner.records;
        let live = records.remove(&key(SESSION_PREFIX, id))?;
        records.remove(&key(EXPIRES_PREFIX, id))?;
        records.remove(&key(FLASH_PREFIX, id))?;
        Ok(live)
    }

    /// A new session in Catalyst mode: `__created` now, bound as `verify_*` say.
    pub(super) fn catalyst_fresh(
        &self,
        config: &CatalystConfig,
        reason: NewReason,
        client: &Client<'_>,
    ) -> Result<Session> {
        let now = self.now();
        let times = Times {
            created: now,
            updated: now,
            active: now,
            expires: now.saturating_add(config.expires),
        };
        let binding = Binding {
            address: config.verify_address.then(|| client.address_text()),
            user_agent: config
                .verify_user_agent
                .then(|| client.user_agent.unwrap_or("").to_owned()),
        };
        Ok(Session::new(self.new_id()?, reason, times, binding))
    }

    /// Whether the request of `client` may use a session bound as `binding` (Catalyst
    /// checks `__address` only when present, and `__user_agent` always).
    fn catalyst_mismatch(
        config: &CatalystConfig,
        binding: &Binding,
        client: &Client<'_>,
    ) -> Option<NewReason> {
        if config.verify_address
            && let Some(bound) = &binding.address
            && *bound != client.address_text()
        {
            return Some(NewReason::AddressChanged);
        }
        if config.verify_user_agent
            && binding.user_agent.as_deref().unwrap_or("") != client.user_agent.unwrap_or("")
        {
            return Some(NewReason::UserAgentChanged);
        }
        None
    }

    /// Catalyst's load: `expires:SID` first (missing or past: the session is deleted, as
    /// Catalyst deletes it, "session expired"), then `session:SID`, then the binding; a live
    /// session's expiry moves as Catalyst's `extend_session_expires` moves it.
    pub(super) fn catalyst_load(
        &self,
        config: &CatalystConfig,
        id: Option<&SessionId>,
        client: &Client<'_>,
        deliver_flash: bool,
    ) -> Result<Session> {
        let Some(id) = id else {
            return self.catalyst_fresh(config, NewReason::NoId, client);
        };
        let now = self.now();
        let found = self.catalyst_find(config, id, client, now)?;
        let (record, stored_expires) = match found {
            Found::Missing => return self.catalyst_fresh(config, NewReason::Unknown, client),
            Found::Dropped(reason) => return self.catalyst_fresh(config, reason, client),
            Found::Live { record, expires } => (record, expires),
        };
        let due = config.expiry_threshold == 0
            || stored_expires.saturating_sub(config.expiry_threshold) <= now;
        let mut expires = stored_expires;
        let mut extended = false;
        if due {
            let wanted = now.saturating_add(config.expires);
            if wanted > stored_expires {
                match self.catalyst_extend(id, wanted)? {
                    Some(at) => {
                        extended = at > stored_expires;
                        expires = at;
                    }
                    // Deleted meanwhile (a logout in another worker).
                    None => return self.catalyst_fresh(config, NewReason::Unknown, client),
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
        if deliver_flash {
            self.catalyst_take_flash(&mut session)?;
        }
        Ok(session)
    }

    /// What `id` names now: missing, dropped (and deleted), or live.
    fn catalyst_find(
        &self,
        config: &CatalystConfig,
        id: &SessionId,
        client: &Client<'_>,
        now: u64,
    ) -> Result<Found> {
        let expires = self.catalyst_expires(id)?;
        let session = self.inner.records.get(&key(SESSION_PREFIX, id))?;
        let Some(bytes) = session else {
            return Ok(Found::Missing);
        };
        let expires = match expires {
            Some(at) if at >= now => at,
            // No expiry, or a past one: Catalyst deletes the session ("session expired").
            _ => {
                self.catalyst_delete_all(id)?;
                return Ok(Found::Dropped(NewReason::Expired));
            }
        };
        let record = CatalystRecord::decode(&bytes)?;
        if let Some(reason) = Self::catalyst_mismatch(config, &record.binding, client) {
            self.catalyst_delete_all(id)?;
            return Ok(Found::Dropped(reason));
        }
        Ok(Found::Live { record, expires })
    }

    /// Takes the flash values out of `session:SID` (its `__flash`) in one atomic step.
    pub(super) fn catalyst_take_flash(&self, session: &mut Session) -> Result<()> {
        if !session.flash_pending {
            return Ok(());
        }
        session.flash_pending = false;
        let mut taken: Option<Result<Map>> = None;
        self.inner
            .records
            .update(&key(SESSION_PREFIX, &session.id), |current| {
                let Some(bytes) = current else {
                    return Update::Keep;
                };
                let mut record = match CatalystRecord::decode(bytes) {
                    Ok(record) => record,
                    Err(e) => {
                        taken = Some(Err(e));
                        return Update::Keep;
                    }
                };
                if record.flash.is_empty() {
                    return Update::Keep;
                }
                let flash = std::mem::take(&mut record.flash);
                set_encoded(record.encode(), Expiry::Never, flash, &mut taken)
            })?;
        if let Some(flash) = taken.transpose()? {
            session.flash_in = flash;
        }
        Ok(())
    }

    /// Writes a session not stored yet under a free id: `expires:` first, then `session:`.
    fn catalyst_write_new(
        &self,
        record: &CatalystRecord,
        expires: u64,
        first: Option<SessionId>,
    ) -> Result<SessionId> {
        let bytes = record.encode()?;
        let expires_bytes = encode_expires(expires)?;
        let records = &self.inner.records;
        let mut id = match first {
            Some(id) => id,
            None => self.new_id()?,
        };
        for _ in 0..ID_ATTEMPTS {
            if records.insert(&key(EXPIRES_PREFIX, &id), &expires_bytes, Expiry::Never)?
                && records.insert(&key(SESSION_PREFIX, &id), &bytes, Expiry::Never)?
            {
                return Ok(id);
            }
            id = self.new_id()?;
        }
        Err(Error::IdCollision)
    }

    /// Catalyst's save: the session hash merged by key into the stored one (compare and
    /// swap on `session:SID`), `__updated` now; then the expiry moves (a changed session
    /// always extends, as in Catalyst).
    pub(super) fn catalyst_save(
        &self,
        config: &CatalystConfig,
        session: &mut Session,
    ) -> Result<Saved> {
        let now = self.now();
        if session.state == State::New {
            let expires = now.saturating_add(config.expires);
            let record = CatalystRecord {
                created: session.times.created,
                updated: now,
                data: session.data.clone(),
                flash: session.flash_out.clone(),
                binding: session.binding.clone(),
                stored: None,
            };
            session.id = self.catalyst_write_new(&record, expires, Some(session.id))?;
            let times = Times {
                created: record.created,
                updated: now,
                active: now,
                expires,
            };
            session.mark_stored(record.data, times);
            return Ok(Saved::Written);
        }
        match self.catalyst_expires(&session.id)? {
            Some(at) if at >= now => {}
            _ => {
                self.catalyst_delete_all(&session.id)?;
                return Ok(gone(session));
            }
        }
        let decided = self.swap(
            &key(SESSION_PREFIX, &session.id),
            CAS_ROUNDS,
            |current| match current {
                None => Ok(None),
                Some(current) => {
                    let record = self.catalyst_merge(session, current, now)?;
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
            .catalyst_extend(&session.id, now.saturating_add(config.expires))?
            .unwrap_or(session.times.expires);
        let times = Times {
            created: record.created,
            updated: now,
            active: now,
            expires,
        };
        session.mark_stored(record.data, times);
        Ok(Saved::Written)
    }

    /// `session`'s changes applied to the stored hash `current`.
    fn catalyst_merge(
        &self,
        session: &Session,
        current: &[u8],
        now: u64,
    ) -> Result<CatalystRecord> {
        let stored = CatalystRecord::decode(current)?;
        let mut flash = stored.flash;
        for (k, v) in &session.flash_out {
            flash.insert(k.clone(), v.clone());
        }
        Ok(CatalystRecord {
            created: stored.created,
            updated: now,
            data: session.merged_data(Some(&stored.data)),
            flash,
            binding: stored.binding,
            stored: stored.stored,
        })
    }

    /// Catalyst's `change_session_id`: the session (with this request's changes) moves to
    /// a new id; the old id's three keys are deleted.
    pub(super) fn catalyst_change_id(
        &self,
        config: &CatalystConfig,
        session: &mut Session,
    ) -> Result<SessionId> {
        let old = session.id;
        if session.state == State::New || session.invalidated {
            session.id = self.new_id()?;
            return Ok(old);
        }
        let now = self.now();
        let old_key = key(SESSION_PREFIX, &old);
        // Take the old hash in one step (if it can be read), so that no save slips in between.
        let mut taken: Option<Result<(Vec<u8>, CatalystRecord)>> = None;
        self.inner
            .records
            .update(&old_key, |current| match current {
                None => Update::Keep,
                Some(bytes) => match CatalystRecord::decode(bytes) {
                    Ok(record) => {
                        taken = Some(Ok((bytes.to_vec(), record)));
                        Update::Remove
                    }
                    Err(e) => {
                        taken = Some(Err(e));
                        Update::Keep
                    }
                },
            })?;
        let Some((stored_bytes, stored)) = taken.transpose()? else {
            gone(session);
            self.catalyst_delete_all(&old)?;
            session.id = self.new_id()?;
            return Ok(old);
        };
        let mut flash = stored.flash;
        for (k, v) in &session.flash_out {
            flash.insert(k.clone(), v.clone());
        }
        let record = CatalystRecord {
            created: stored.created,
            updated: now,
            data: session.merged_data(Some(&stored.data)),
            flash,
            binding: stored.binding,
            stored: stored.stored,
        };
        let expires = now.saturating_add(config.expires);
        let id = match self.catalyst_write_new(&record, expires, None) {
            Ok(id) => id,
            Err(e) => {
                // Put the old session back as it was; its expiry was never touched.
                let _ = self
                    .inner
                    .records
                    .set_with(&old_key, &stored_bytes, Expiry::Never);
                return Err(e);
            }
        };
        self.catalyst_delete_all(&old)?;
        session.id = id;
        let times = Times {
            created: record.created,
            updated: now,
            active: now,
            expires,
        };
        session.mark_stored(record.data, times);
        Ok(old)
    }

    /// Catalyst's `get_and_set_session_data` on `session:SID`: `f` runs under the page lock.
    pub(super) fn catalyst_update<R>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        let now = self.now();
        let expires = match self.catalyst_expires(id)? {
            Some(at) if at >= now => at,
            Some(_) => {
                self.catalyst_delete_all(id)?;
                return Ok(None);
            }
            None => return Ok(None),
        };
        let mut outcome: Option<Result<R>> = None;
        let mut invalidated = false;
        self.inner
            .records
            .update(&key(SESSION_PREFIX, id), |current| {
                let Some(bytes) = current else {
                    return Update::Keep;
                };
                let stored = match CatalystRecord::decode(bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        outcome = Some(Err(e));
                        return Update::Keep;
                    }
                };
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
                    Applied::Invalidated(result) => {
                        invalidated = true;
                        outcome = Some(Ok(result));
                        return Update::Remove;
                    }
                    Applied::Unchanged(result) => {
                        outcome = Some(Ok(result));
                        return Update::Keep;
                    }
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
                set_encoded(record.encode(), Expiry::Never, result, &mut outcome)
            })?;
        if invalidated {
            self.catalyst_delete_all(id)?;
        }
        outcome.transpose()
    }
}
