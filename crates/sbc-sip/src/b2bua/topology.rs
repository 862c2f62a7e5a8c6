//! What crosses the B2BUA from one leg to the other: the header and body policy.
//! (Being built: see issue 12.)
