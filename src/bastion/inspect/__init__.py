"""Request inspection (WAF): locations, normalisation, detectors, anomaly scoring."""
