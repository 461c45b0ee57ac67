"""What the web application imports: light, quick and never raising, with no ORM and no job machinery."""
