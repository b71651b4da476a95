"""Labelled data sets in memory, the ordered, segmented streams built from them (schedules, corruptions
for domain drift), and the demo's choice of backbone and stream."""
