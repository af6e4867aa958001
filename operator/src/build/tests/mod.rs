//! Tests of the builders: whole objects against reviewed fixtures, and focused properties.

mod cases;
mod characterization;
mod fixture;
mod properties;
