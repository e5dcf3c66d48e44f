//! Policy files: parse, validate, compile.
