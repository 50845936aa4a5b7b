//! Saving: writes that merge by key with a compare-and-swap, new ids for new sessions and
//! logins, deletion, and the atomic read-modify-write.

#[cfg(feature = "perl")]
use super::Mode;
use super::SessionStore;
use crate::session::data::{Session, State, from_unix_secs};
use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::record::{Map, Record, RecordView, Times};
use crate::{Expiry, Update};

/// Optimistic save attempts before a save decides under the page lock instead.
pub(super) const CAS_ROUNDS: usize = 8;
/// New ids tried when a generated id is already taken (which a working random number
/// generator never does).
pub(super) const ID_ATTEMPTS: usize = 4;

/// What [`SessionStore::save`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Saved {
    /// Nothing to write.
    Unchanged,
    /// The session was written.
    Written,
    /// The session had been [invalidated](Session::invalidate) and was removed.
    Deleted,
    /// The stored session had been deleted, had expired, or had moved to a new id meanwhile;
    /// it was not recreated, and the session now counts as invalidated.
    Gone,
}

/// What a save does to the stored record.
enum Plan {
    /// The stored session is gone (`remove`: it is there but expired, so remove it).
    Gone { remove: bool },
    Write {
        bytes: Vec<u8>,
        times: Times,
        data: Map,
    },
}

impl Plan {
    fn update(&self) -> Update {
        match self {
            Plan::Gone { remove: false } => Update::Keep,
            Plan::Gone { remove: true } => Update::Remove,
            Plan::Write { bytes, times, .. } => {
                Update::SetWith(bytes.clone(), Expiry::At(from_unix_secs(times.expires)))
            }
        }
    }
}

impl SessionStore {
    /// Writes what changed in `session`: nothing if nothing did
    /// ([`Session::is_modified`]); removes it if it was
    /// [invalidated](Session::invalidate).
    ///
    /// Concurrent saves of one session (two requests, in any processes) never produce a torn
    /// record: each save replaces the record as a whole, atomically. For each key it changed,
    /// the last save wins; keys it did not change keep what other saves wrote, and flash
    /// values from other requests are kept. A session deleted, expired or moved to a new id
    /// meanwhile is not brought back ([`Saved::Gone`]). For a read-modify-write of one value
    /// (a counter) use [`update`](Self::update).
    ///
    /// Each write counts as activity: it moves the idle deadline (within the lifetime).
    ///
    /// # Errors
    /// [`Error::Cache`] — [`crate::Error::TooLarge`] if the record does not fit in a cache
    /// page (nothing is written); [`Error::BadRecord`] / [`Error::UnsupportedVersion`] if
    /// the stored record cannot be read (it is left alone).
    pub fn save(&self, session: &mut Session) -> Result<Saved> {
        if session.invalidated {
            if session.state == State::Stored {
                self.delete(&session.id)?;
            }
            session.state = State::New;
            session.persist = false;
            return Ok(Saved::Deleted);
        }
        if !session.is_modified() {
            return Ok(Saved::Unchanged);
        }
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(config) = &self.inner.mode {
            return self.catalyst_save(config, session);
        }
        let now = self.now();
        match session.state {
            State::New => self.save_new(session, now),
            State::Stored => self.save_stored(session, now, CAS_ROUNDS),
        }
    }

    /// Writes a session that is not stored yet, under a key that must be free.
    fn save_new(&self, session: &mut Session, now: u64) -> Result<Saved> {
        let created = session.times.created;
        let times = Times {
            created,
            updated: now,
            active: now,
            expires: self.deadline(created, now),
        };
        if now >= times.expires {
            return Ok(gone(session));
        }
        let record = Record {
            times,
            data: session.data.clone(),
            flash: session.flash_out.clone(),
            binding: session.binding.clone(),
        };
        let bytes = record.encode()?;
        session.id = self.write_new(&bytes, times.expires, Some(session.id))?;
        session.mark_stored(record.data, times);
        Ok(Saved::Written)
    }

    /// Stores `bytes` under a free id (`first`, if given and free, else new ones); returns
    /// the id used.
    fn write_new(&self, bytes: &[u8], expires: u64, first: Option<SessionId>) -> Result<SessionId> {
        let mut id = match first {
            Some(id) => id,
            None => self.new_id()?,
        };
        let until = Expiry::At(from_unix_secs(expires));
        for _ in 0..ID_ATTEMPTS {
            if self.inner.records.insert(&self.key(&id), bytes, until)? {
                return Ok(id);
            }
            id = self.new_id()?;
        }
        Err(Error::IdCollision)
    }

    /// What saving `session` over `current` (the stored bytes) does.
    fn plan(&self, session: &Session, current: Option<&[u8]>, now: u64) -> Result<Plan> {
        let Some(bytes) = current else {
            return Ok(Plan::Gone { remove: false });
        };
        let view = RecordView::parse(bytes)?;
        if now >= view.header.times.expires {
            return Ok(Plan::Gone { remove: true });
        }
        let stored = view.decode()?;
        let created = stored.times.created;
        let times = Times {
            created,
            updated: now,
            active: now,
            expires: self.deadline(created, now),
        };
        if now >= times.expires {
            return Ok(Plan::Gone { remove: true });
        }
        let mut flash = stored.flash;
        for (k, v) in &session.flash_out {
            flash.insert(k.clone(), v.clone());
        }
        let record = Record {
            times,
            data: session.merged_data(Some(&stored.data)),
            flash,
            binding: stored.binding,
        };
        Ok(Plan::Write {
            bytes: record.encode()?,
            times,
            data: record.data,
        })
    }

    /// Merges into the stored record: up to `rounds` compare-and-swap rounds with the merge
    /// done outside the lock, then (if other writers keep winning) one merge under the lock.
    pub(super) fn save_stored(
        &self,
        session: &mut Session,
        now: u64,
        rounds: usize,
    ) -> Result<Saved> {
        let key = self.key(&session.id);
        let plan = self.swap(
            &key,
            rounds,
            |current| self.plan(session, current, now),
            Plan::update,
        )?;
        Ok(match plan {
            Plan::Gone { .. } => gone(session),
            Plan::Write { times, data, .. } => {
                session.mark_stored(data, times);
                Saved::Written
            }
        })
    }

    /// Removes the session `id`. Returns whether it was live.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn delete(&self, id: &SessionId) -> Result<bool> {
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(_) = &self.inner.mode {
            return self.catalyst_delete_all(id);
        }
        Ok(self.inner.records.remove(&self.key(id))?)
    }

    /// Moves the session to a new id (do this when a user logs in or gains privileges, so
    /// that an id known before — perhaps planted by an attacker — is worthless after): its
    /// values, including unsaved changes, are written under the new id and the old id is
    /// deleted. Returns the old id. For a session not stored yet, only the id changes.
    ///
    /// A request still using the old id afterwards gets a new, empty session. If the stored
    /// session was deleted or expired meanwhile, it is not recreated (the session counts as
    /// invalidated, as after [`Saved::Gone`]).
    ///
    /// # Errors
    /// As [`save`](Self::save); on an error the session stays under its old id.
    pub fn change_id(&self, session: &mut Session) -> Result<SessionId> {
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(config) = &self.inner.mode {
            return self.catalyst_change_id(config, session);
        }
        let old = session.id;
        if session.state == State::New || session.invalidated {
            session.id = self.new_id()?;
            return Ok(old);
        }
        let now = self.now();
        let old_key = self.key(&old);
        // Take the old record (if it can be read) in one step, so that no save slips in
        // between reading it and deleting it.
        let mut taken: Option<Result<Vec<u8>>> = None;
        self.inner
            .records
            .update(&old_key, |current| match current {
                None => Update::Keep,
                Some(bytes) => match RecordView::parse(bytes) {
                    Ok(_) => {
                        taken = Some(Ok(bytes.to_vec()));
                        Update::Remove
                    }
                    Err(e) => {
                        taken = Some(Err(e));
                        Update::Keep
                    }
                },
            })?;
        let Some(stored) = taken.transpose()? else {
            gone(session);
            session.id = self.new_id()?;
            return Ok(old);
        };
        let restore = || {
            if let Ok(view) = RecordView::parse(&stored) {
                let until = Expiry::At(from_unix_secs(view.header.times.expires));
                let _ = self.inner.records.set_with(&old_key, &stored, until);
            }
        };
        let written = self
            .plan(session, Some(&stored), now)
            .and_then(|plan| match plan {
                Plan::Gone { .. } => Ok(None),
                Plan::Write { bytes, times, data } => {
                    let id = self.write_new(&bytes, times.expires, None)?;
                    Ok(Some((id, times, data)))
                }
            });
        match written {
            Err(e) => {
                restore();
                Err(e)
            }
            Ok(None) => {
                gone(session);
                session.id = self.new_id()?;
                Ok(old)
            }
            Ok(Some((id, times, data))) => {
                session.id = id;
                session.mark_stored(data, times);
                Ok(old)
            }
        }
    }

    /// Atomic read-modify-write of the session `id`: `f` gets the stored session under the
    /// cache's page lock — no other thread or process can change the session meanwhile —
    /// and whatever it changes is written before the lock is released. `None` if there is
    /// no live session (an expired one is deleted).
    ///
    /// This is not a request: it does not deliver flash values (they stay pending, and `f`
    /// may add some with [`Session::flash`]), check the binding, or move the idle deadline.
    /// [`Session::invalidate`] in `f` deletes the session.
    ///
    /// `f` runs under the page lock: keep it short, and do not use this store's cache in it
    /// (that is [`crate::Error::Reentrant`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = fastmmap::session::SessionStore::builder().path(dir.path().join("s")).build()?;
    /// # let mut s = store.create(&Default::default())?;
    /// # store.save(&mut s)?;
    /// # let id = *s.id();
    /// let hits = store.update(&id, |session| {
    ///     let n = session.get::<u64>("hits").ok().flatten().unwrap_or(0) + 1;
    ///     session.insert("hits", &n).map(|_| n)
    /// })?;
    /// assert_eq!(hits.transpose()?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`save`](Self::save); if the result does not fit, nothing is written.
    pub fn update<R>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(_) = &self.inner.mode {
            return self.catalyst_update(id, f);
        }
        let now = self.now();
        let mut outcome: Option<Result<R>> = None;
        self.inner.records.update(&self.key(id), |current| {
            let Some(bytes) = current else {
                return Update::Keep;
            };
            let record = match Record::decode(bytes) {
                Ok(r) => r,
                Err(e) => {
                    outcome = Some(Err(e));
                    return Update::Keep;
                }
            };
            if now >= record.times.expires {
                return Update::Remove;
            }
            let pending_flash = record.flash.clone();
            let mut session = Session::loaded(*id, record, false);
            session.flash_out = std::mem::take(&mut session.flash_in);
            let (result, session) = match apply(session, &pending_flash, f) {
                Applied::Invalidated(result) => {
                    outcome = Some(Ok(result));
                    return Update::Remove;
                }
                Applied::Unchanged(result) => {
                    outcome = Some(Ok(result));
                    return Update::Keep;
                }
                Applied::Changed(result, session) => (result, *session),
            };
            let mut times = session.times;
            times.updated = now;
            let record = Record {
                times,
                data: session.data,
                flash: session.flash_out,
                binding: session.binding,
            };
            let until = Expiry::At(from_unix_secs(times.expires));
            set_encoded(record.encode(), until, result, &mut outcome)
        })?;
        outcome.transpose()
    }
}

/// What an update's closure did to a session loaded under the lock.
pub(super) enum Applied<R> {
    /// It invalidated the session: remove it.
    Invalidated(R),
    /// It changed nothing (flash values included): keep the record.
    Unchanged(R),
    /// It changed the session, which is to be written.
    Changed(R, Box<Session>),
}

/// Runs an update's closure `f` on `session` (its pending flash values `pending_flash` in
/// `flash_out`) and says what to do with the record.
pub(super) fn apply<R>(
    mut session: Session,
    pending_flash: &Map,
    f: impl FnOnce(&mut Session) -> R,
) -> Applied<R> {
    let result = f(&mut session);
    if session.invalidated {
        return Applied::Invalidated(result);
    }
    let changed =
        session.cleared || !session.changes.is_empty() || session.flash_out != *pending_flash;
    if changed {
        Applied::Changed(result, Box::new(session))
    } else {
        Applied::Unchanged(result)
    }
}

/// The update that stores `encoded` until `until`, with `result` as the outcome; if the record
/// could not be encoded, the error is the outcome and nothing changes.
pub(super) fn set_encoded<R>(
    encoded: Result<Vec<u8>>,
    until: Expiry,
    result: R,
    outcome: &mut Option<Result<R>>,
) -> Update {
    match encoded {
        Ok(bytes) => {
            *outcome = Some(Ok(result));
            Update::SetWith(bytes, until)
        }
        Err(e) => {
            *outcome = Some(Err(e));
            Update::Keep
        }
    }
}

impl SessionStore {
    /// Replaces the record under `key` with what `decide` makes of it, atomically, with the
    /// work of `decide` done outside the lock: up to `rounds` compare-and-swap rounds (read,
    /// decide, then write `write(&decision)` only if the record is still what was read), then,
    /// if other writers keep winning, one round with `decide` under the lock. Returns the
    /// decision that took effect.
    pub(super) fn swap<P>(
        &self,
        key: &[u8],
        rounds: usize,
        decide: impl Fn(Option<&[u8]>) -> Result<P>,
        write: impl Fn(&P) -> Update,
    ) -> Result<P> {
        let records = &self.inner.records;
        for _ in 0..rounds {
            let current = records.get(key)?;
            let decision = decide(current.as_deref())?;
            let mut swapped = false;
            records.update(key, |now_bytes| {
                if now_bytes != current.as_deref() {
                    return Update::Keep;
                }
                swapped = true;
                write(&decision)
            })?;
            if swapped {
                return Ok(decision);
            }
        }
        // `decide` runs under the lock here; its result leaves through `decided`, since the
        // closure's own return value is the update.
        let mut decided = None;
        records.update(key, |current| match decide(current) {
            Ok(decision) => {
                let update = write(&decision);
                decided = Some(Ok(decision));
                update
            }
            Err(e) => {
                decided = Some(Err(e));
                Update::Keep
            }
        })?;
        decided.expect("update calls its closure")
    }
}

/// The stored session is gone: the in-memory one must not bring it back.
pub(super) fn gone(session: &mut Session) -> Saved {
    session.state = State::New;
    session.invalidated = true;
    session.persist = false;
    Saved::Gone
}
