"""The data stream: schedules of labelled samples and how they are sent and received."""
