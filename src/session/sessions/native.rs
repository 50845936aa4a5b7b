//! The native record format: one cache entry per session, under `prefix + id`, with a cache
//! expiry equal to the session's own, so the cache reclaims it when it ends.
//!
//! Loading runs in one atomic update: under the lock it reads only the record header, deletes
//! an expired or wrongly bound session, and rewrites the record only to deliver flash values
//! or to move the idle deadline (at most once per extension threshold). Saving writes only
//! the keys a request changed, with a compare-and-swap on the stored bytes so that the JSON
//! work happens outside the lock.

use super::Client;
use super::save::{Applied, CAS_ROUNDS, ID_ATTEMPTS, Moved, Saved, apply, gone, move_record, swap};
use super::tier::Tier;
use crate::session::data::{NewReason, Session, State, from_unix_secs};
use crate::session::error::{Error, Result};
use crate::session::id::{IdFormat, SessionId};
use crate::session::record::{Binding, MAX_TIME, Map, Record, RecordView, Times};
use crate::{Expiry, Update};

/// The native way of keeping sessions, with its options (checked by the builder).
#[derive(Clone, Debug)]
pub(crate) struct Native {
    /// The absolute lifetime, in seconds.
    pub(super) lifetime: u64,
    /// The idle timeout, in seconds.
    pub(super) idle: Option<u64>,
    /// How long after the last extension a load moves the idle deadline again, in seconds.
    pub(super) threshold: u64,
    pub(super) bind_address: bool,
    pub(super) bind_user_agent: bool,
    /// The key prefix.
    pub(super) prefix: Vec<u8>,
}

/// What a load found under the presented id, decided under the lock.
pub(super) enum Found {
    Missing,
    Unreadable(Error),
    Dropped(NewReason),
    Live {
        bytes: Vec<u8>,
        extended: Option<u64>,
    },
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

impl Native {
    /// The cache key of the session `id`.
    pub(super) fn key(&self, id: &SessionId) -> Vec<u8> {
        super::key(&self.prefix, id)
    }

    /// When a session created at `created` and last active at `active` ends: at most
    /// [`MAX_TIME`], when the cache entry holding it ends anyway.
    fn deadline(&self, created: u64, active: u64) -> u64 {
        let absolute = created.saturating_add(self.lifetime);
        let end = match self.idle {
            Some(idle) => absolute.min(active.saturating_add(idle)),
            None => absolute,
        };
        end.min(MAX_TIME)
    }

    /// The new expiry if a load at `now` should move the idle deadline.
    fn extension(&self, times: Times, now: u64) -> Option<u64> {
        self.idle?;
        if now.saturating_sub(times.active) < self.threshold {
            return None;
        }
        let expires = self.deadline(times.created, now);
        (expires > times.expires).then_some(expires)
    }

    fn binding_for(&self, client: &Client<'_>) -> Binding {
        Binding {
            address: self.bind_address.then(|| client.address_text()),
            user_agent: self
                .bind_user_agent
                .then(|| client.user_agent_text().to_owned()),
        }
    }

    /// Why `view` may not be used by `client`, if it may not.
    fn binding_mismatch(&self, view: &RecordView<'_>, client: &Client<'_>) -> Option<NewReason> {
        if self.bind_address
            && let Some(bound) = view.address
            && bound != client.address_text()
        {
            return Some(NewReason::AddressChanged);
        }
        if self.bind_user_agent
            && let Some(bound) = view.user_agent
            && bound != client.user_agent_text()
        {
            return Some(NewReason::UserAgentChanged);
        }
        None
    }

    pub(super) fn fresh(
        &self,
        tier: &Tier,
        reason: NewReason,
        client: &Client<'_>,
    ) -> Result<Session> {
        let now = tier.now();
        let times = Times::written(now, now, self.deadline(now, now));
        let id = IdFormat::Native.generate()?;
        Ok(Session::new(id, reason, times, self.binding_for(client)))
    }

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
        let now = tier.now();
        let found = tier.update_with(&self.key(id), |old| match old {
            // An entry the cache no longer shows may still be there, expired: remove it.
            None => (Update::Remove, Found::Missing),
            Some(bytes) => {
                let (found, update) = self.inspect(bytes, now, client, deliver_flash);
                (update, found)
            }
        })?;
        match found {
            Found::Missing => self.fresh(tier, NewReason::Unknown, client),
            Found::Unreadable(e) => Err(e),
            Found::Dropped(reason) => self.fresh(tier, reason, client),
            Found::Live { bytes, extended } => {
                let mut record = Record::decode(&bytes)?;
                if let Some(expires) = extended {
                    record.times.active = now;
                    record.times.expires = expires;
                }
                let pending = !deliver_flash && !record.flash.is_empty();
                if !deliver_flash {
                    record.flash.clear();
                }
                let mut session = Session::loaded(*id, record, extended.is_some());
                session.flash_pending = pending;
                Ok(session)
            }
        }
    }

    /// What a load at `now` by `client` makes of the stored `bytes`, and what it does to
    /// them (under the lock: only the header is parsed).
    pub(super) fn inspect(
        &self,
        bytes: &[u8],
        now: u64,
        client: &Client<'_>,
        deliver_flash: bool,
    ) -> (Found, Update) {
        let view = match RecordView::parse(bytes) {
            Ok(view) => view,
            Err(e) => return (Found::Unreadable(e), Update::Keep),
        };
        let times = view.header.times;
        if now >= times.expires {
            return (Found::Dropped(NewReason::Expired), Update::Remove);
        }
        if let Some(reason) = self.binding_mismatch(&view, client) {
            return (Found::Dropped(reason), Update::Remove);
        }
        let extended = self.extension(times, now);
        let drop_flash = deliver_flash && view.header.has_flash();
        let found = Found::Live {
            bytes: bytes.to_vec(),
            extended,
        };
        if extended.is_none() && !drop_flash {
            return (found, Update::Keep);
        }
        let (active, expires) = extended.map_or((times.active, times.expires), |e| (now, e));
        let update = Update::SetWith(
            view.patched(active, expires, drop_flash),
            Expiry::At(from_unix_secs(expires)),
        );
        (found, update)
    }

    /// Takes the flash values out of the stored record in one atomic step.
    pub(super) fn take_flash(&self, tier: &Tier, session: &mut Session) -> Result<()> {
        let taken = tier.try_update(&self.key(&session.id), |current| {
            let Some(bytes) = current else {
                return Ok((Update::Keep, None));
            };
            let view = RecordView::parse(bytes)?;
            if !view.header.has_flash() {
                return Ok((Update::Keep, None));
            }
            let flash = view.flash()?;
            let times = view.header.times;
            let update = Update::SetWith(
                view.patched(times.active, times.expires, true),
                Expiry::At(from_unix_secs(times.expires)),
            );
            Ok((update, Some(flash)))
        })?;
        if let Some(flash) = taken {
            session.flash_in = flash;
        }
        Ok(())
    }

    /// Writes what changed in `session` (it has changes and is not invalidated).
    pub(super) fn save(&self, tier: &Tier, session: &mut Session) -> Result<Saved> {
        let now = tier.now();
        match session.state {
            State::New => self.save_new(tier, session, now),
            State::Stored => self.save_stored(tier, session, now, CAS_ROUNDS),
        }
    }

    /// Writes a session that is not stored yet, under a key that must be free.
    fn save_new(&self, tier: &Tier, session: &mut Session, now: u64) -> Result<Saved> {
        let created = session.times.created;
        let times = Times::written(created, now, self.deadline(created, now));
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
        session.id = self.write_new(tier, &bytes, times.expires, Some(session.id))?;
        session.mark_stored(record.data, times);
        Ok(Saved::Written)
    }

    /// Stores `bytes` under a free id (`first`, if given and free, else new ones); returns
    /// the id used.
    fn write_new(
        &self,
        tier: &Tier,
        bytes: &[u8],
        expires: u64,
        first: Option<SessionId>,
    ) -> Result<SessionId> {
        let mut id = match first {
            Some(id) => id,
            None => IdFormat::Native.generate()?,
        };
        let until = Expiry::At(from_unix_secs(expires));
        for _ in 0..ID_ATTEMPTS {
            if tier.insert(&self.key(&id), bytes, until)? {
                return Ok(id);
            }
            id = IdFormat::Native.generate()?;
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
        let times = Times::written(created, now, self.deadline(created, now));
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
        tier: &Tier,
        session: &mut Session,
        now: u64,
        rounds: usize,
    ) -> Result<Saved> {
        let key = self.key(&session.id);
        let plan = swap(
            tier,
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

    pub(super) fn delete(&self, tier: &Tier, id: &SessionId) -> Result<bool> {
        Ok(tier.remove(&self.key(id))?)
    }

    /// Moves a stored session to a new id: the new record is written before the old one goes,
    /// and the old one goes only as it was read (see [`move_record`]), so an error at any step
    /// leaves the session whole under its old id, as `change_id` promises.
    pub(super) fn change_id(&self, tier: &Tier, session: &mut Session) -> Result<SessionId> {
        let old = session.id;
        let now = tier.now();
        let old_key = self.key(&old);
        let mut expired = false;
        let moved = move_record(
            tier,
            &old_key,
            |stored| match self.plan(session, Some(stored), now)? {
                Plan::Gone { remove } => {
                    expired = remove;
                    Ok(None)
                }
                Plan::Write { bytes, times, data } => Ok(Some((bytes, (times, data)))),
            },
            |bytes, (times, _), to| match to {
                None => self.write_new(tier, bytes, times.expires, None),
                Some(id) => {
                    let until = Expiry::At(from_unix_secs(times.expires));
                    tier.set_with(&self.key(&id), bytes, until)?;
                    Ok(id)
                }
            },
            |id| {
                let _ = tier.remove(&self.key(id));
            },
        )?;
        match moved {
            Moved::To(id, (times, data)) => {
                session.id = id;
                session.mark_stored(data, times);
            }
            Moved::Gone => {
                if expired {
                    tier.remove(&old_key)?;
                }
                gone(session);
                session.id = IdFormat::Native.generate()?;
            }
        }
        Ok(old)
    }

    /// The atomic read-modify-write of the session `id` under the lock.
    pub(super) fn update<R>(
        &self,
        tier: &Tier,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        let now = tier.now();
        tier.try_update(&self.key(id), |current| {
            let Some(bytes) = current else {
                return Ok((Update::Keep, None));
            };
            let record = Record::decode(bytes)?;
            if now >= record.times.expires {
                return Ok((Update::Remove, None));
            }
            let pending_flash = record.flash.clone();
            let mut session = Session::loaded(*id, record, false);
            session.flash_out = std::mem::take(&mut session.flash_in);
            let (result, session) = match apply(session, &pending_flash, f) {
                Applied::Invalidated(result) => return Ok((Update::Remove, Some(result))),
                Applied::Unchanged(result) => return Ok((Update::Keep, Some(result))),
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
            Ok((Update::SetWith(record.encode()?, until), Some(result)))
        })
    }
}
