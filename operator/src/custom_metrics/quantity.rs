//! Kubernetes quantities (`resource.Quantity`) for metric values: integers as they are
//! (`42`), fractions in milli-units (`1500m`), the form the HPA reads back exactly.

/// Formats `value` as a Kubernetes quantity; `None` for NaN and infinities, which a
/// quantity cannot hold.
pub fn format(value: f64) -> Option<String> {
    if !value.is_finite() {
        return None;
    }
    // Integers up to 2^53 are exact in an f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if value.fract() == 0.0 && value.abs() <= EXACT {
        return Some(format!("{}", value as i64));
    }
    let milli = (value * 1000.0).round();
    if milli.abs() > EXACT {
        return Some(format!("{}", value.round() as i64));
    }
    let milli = milli as i64;
    if milli % 1000 == 0 {
        Some(format!("{}", milli / 1000))
    } else {
        Some(format!("{milli}m"))
    }
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn integers_are_plain_and_fractions_are_milli() {
        assert_eq!(format(0.0).as_deref(), Some("0"));
        assert_eq!(format(42.0).as_deref(), Some("42"));
        assert_eq!(format(-3.0).as_deref(), Some("-3"));
        assert_eq!(format(1.5).as_deref(), Some("1500m"));
        assert_eq!(format(0.001).as_deref(), Some("1m"));
        assert_eq!(
            format(2.0004).as_deref(),
            Some("2"),
            "rounds to milli-units"
        );
        assert_eq!(format(1e15).as_deref(), Some("1000000000000000"));
    }

    #[test]
    fn non_finite_values_have_no_quantity() {
        assert_eq!(format(f64::NAN), None);
        assert_eq!(format(f64::INFINITY), None);
    }
}
