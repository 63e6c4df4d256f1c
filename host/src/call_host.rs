//! What a handler call may ask of this host: the runtime's [`HostView`],
//! answered from the store (committed state) and the schema registry (the
//! check every published event passes).

use crate::event::{Event, SchemaError};
use crate::runtime::HostView;
use crate::schemas::Schemas;
use crate::store::Store;
use std::sync::Arc;

pub struct CallHost {
    pub store: Arc<Store>,
    pub schemas: Arc<Schemas>,
}

impl HostView for CallHost {
    fn state_get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .state_get(handler, key)
            .map_err(|e| e.to_string())
    }

    fn check_published(&self, event: &Event) -> Result<(), SchemaError> {
        self.schemas.check(event)
    }
}
