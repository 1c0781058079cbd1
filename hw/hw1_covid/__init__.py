"""HW1: predict the day-5 COVID tested-positive rate of a US state from survey data."""
