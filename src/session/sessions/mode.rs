//! The record-format seam, chosen once by the builder: [`Mode::Native`] (this crate's own
//! records, `native.rs`) or [`Mode::Catalyst`] (Catalyst's three keys, `catalyst.rs`). Each
//! operation is one `match` here, as tower's `Either` service is; what differs lives in the
//! file of each way, and a new way is one more variant and one more file.

use super::Client;
#[cfg(feature = "perl")]
use super::catalyst::Catalyst;
use super::native::Native;
use super::save::Saved;
use super::tier::Tier;
use crate::session::data::{NewReason, Session};
use crate::session::error::Result;
use crate::session::id::{IdFormat, SessionId};

/// How a store keeps its sessions.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// This crate's own record format, one cache entry per session.
    Native(Native),
    /// As Catalyst::Plugin::Session with Store::FastMmap (three keys per session).
    #[cfg(feature = "perl")]
    Catalyst(Catalyst),
}

impl Mode {
    /// The shape of this way's ids.
    pub(super) fn id_format(&self) -> IdFormat {
        match self {
            Mode::Native(_) => IdFormat::Native,
            #[cfg(feature = "perl")]
            Mode::Catalyst(_) => IdFormat::Catalyst,
        }
    }

    /// The cache key of the record holding the session `id`'s data.
    pub(super) fn key(&self, id: &SessionId) -> Vec<u8> {
        match self {
            Mode::Native(way) => way.key(id),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.key(id),
        }
    }

    /// A new session, not stored yet.
    pub(super) fn fresh(
        &self,
        tier: &Tier,
        reason: NewReason,
        client: &Client<'_>,
    ) -> Result<Session> {
        match self {
            Mode::Native(way) => way.fresh(tier, reason, client),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.fresh(tier, reason, client),
        }
    }

    /// The session `id` names, or a new one.
    pub(super) fn load(
        &self,
        tier: &Tier,
        id: Option<&SessionId>,
        client: &Client<'_>,
        deliver_flash: bool,
    ) -> Result<Session> {
        let (loaded, kind) = match self {
            Mode::Native(way) => (way.load(tier, id, client, deliver_flash), "session"),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => (way.load(tier, id, client, deliver_flash), "catalyst"),
        };
        loaded.map_err(|e| crate::session::events::session_unreadable(tier.cache().path(), kind, e))
    }

    /// Takes the stored flash values of `session` (it has some pending).
    pub(super) fn take_flash(&self, tier: &Tier, session: &mut Session) -> Result<()> {
        match self {
            Mode::Native(way) => way.take_flash(tier, session),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.take_flash(tier, session),
        }
    }

    /// Writes `session`, which has changes and is not invalidated.
    pub(super) fn save(&self, tier: &Tier, session: &mut Session) -> Result<Saved> {
        match self {
            Mode::Native(way) => way.save(tier, session),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.save(tier, session),
        }
    }

    /// Deletes the session `id`; whether it was there.
    pub(super) fn delete(&self, tier: &Tier, id: &SessionId) -> Result<bool> {
        match self {
            Mode::Native(way) => way.delete(tier, id),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.delete(tier, id),
        }
    }

    /// Moves a stored session to a new id; returns the old one.
    pub(super) fn change_id(&self, tier: &Tier, session: &mut Session) -> Result<SessionId> {
        match self {
            Mode::Native(way) => way.change_id(tier, session),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.change_id(tier, session),
        }
    }

    /// The atomic read-modify-write of the session `id`.
    pub(super) fn update<R>(
        &self,
        tier: &Tier,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        match self {
            Mode::Native(way) => way.update(tier, id, f),
            #[cfg(feature = "perl")]
            Mode::Catalyst(way) => way.update(tier, id, f),
        }
    }
}
