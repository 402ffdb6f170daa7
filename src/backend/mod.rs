//! The snapshot API's implementations and the choice between them.
